{{/*
Labels on every object: Rotor's own (the same as deploy/'s) and Helm's.
*/}}
{{- define "rotor.labels" -}}
app.kubernetes.io/part-of: rotor
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/*
The controller pods' selector labels: fixed, as in deploy/, since a
Deployment's selector cannot change on upgrade.
*/}}
{{- define "rotor.selectorLabels" -}}
app.kubernetes.io/name: rotor-controller
{{- end }}

{{/*
An image reference from {repository, tag, digest}: the digest wins, the tag
defaults to the chart's appVersion.
*/}}
{{- define "rotor.image" -}}
{{- $image := index . 0 -}}
{{- $chart := index . 1 -}}
{{- if $image.digest -}}
{{ $image.repository }}@{{ $image.digest }}
{{- else -}}
{{ $image.repository }}:{{ $image.tag | default $chart.AppVersion }}
{{- end -}}
{{- end }}

{{/*
The webhook's Service DNS names, for certificates.
*/}}
{{- define "rotor.webhookDnsNames" -}}
- rotor-webhook.{{ .Release.Namespace }}.svc
- rotor-webhook.{{ .Release.Namespace }}.svc.cluster.local
{{- end }}
