//! The sidecars' push endpoint as rotation's consumers: `POST
//! /v1/refresh` to each sidecar over HTTP, and its answer as an [`Ack`].
//! Standalone mode pushes to the URLs a policy lists; in a cluster,
//! rotation reaches pods over the channel (`channel::StreamConsumers`).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::rotation::machine::{Ack, Consumers};

/// Sidecars reached over HTTP.
pub struct HttpSidecars {
    urls: Vec<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpSidecars {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn one(&self, url: &str, body: Bytes) -> Ack {
        let fail = |e: String| Ack::answered(url.to_owned(), None, Some(e));
        let request =
            match hyper::Request::post(format!("{}/v1/refresh", url.trim_end_matches('/')))
                .header("content-type", "application/json")
                .body(Full::new(body))
            {
                Ok(r) => r,
                Err(e) => return fail(e.to_string()),
            };
        let response =
            match tokio::time::timeout(Duration::from_secs(10), self.client.request(request)).await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return fail(format!("unreachable: {e}")),
                Err(_) => return fail("timed out".to_owned()),
            };
        let bytes = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return fail(e.to_string()),
        };
        let reply: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Ack::answered(
            url.to_owned(),
            reply["secrets"][0]["version"].as_str().map(str::to_owned),
            reply["secrets"][0]["error"]
                .as_str()
                .or(reply["error"].as_str())
                .map(str::to_owned),
        )
    }
}

impl HttpSidecars {
    /// Pushes to `urls` at once and returns their answers in order.
    pub async fn refresh_urls(
        &self,
        urls: &[String],
        secret: &str,
        version: Option<&str>,
    ) -> Vec<Ack> {
        let mut item = serde_json::json!({ "name": secret });
        if let Some(v) = version {
            item["version"] = v.into();
        }
        let body = Bytes::from(serde_json::json!({ "secrets": [item] }).to_string());
        futures_util::future::join_all(urls.iter().map(|u| self.one(u, body.clone()))).await
    }
}

#[async_trait]
impl Consumers for HttpSidecars {
    async fn refresh(&self, secret: &str, version: Option<&str>) -> Vec<Ack> {
        self.refresh_urls(&self.urls, secret, version).await
    }
}
