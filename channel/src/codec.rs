//! Frames: a 4-byte big-endian length, then that many bytes of one JSON
//! message. [`encode`] writes one; a [`Decoder`] is fed the body's chunks
//! as they arrive and yields whole messages. It refuses a frame over its
//! limit as soon as the length is read, so a peer can make it buffer at
//! most one limit's worth (plus one chunk).

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

const HEADER: usize = 4;

/// One message as a frame.
pub fn encode<M: Serialize>(message: &M) -> Result<Bytes> {
    let body = serde_json::to_vec(message).map_err(|source| Error::Encode { source })?;
    let len = u32::try_from(body.len()).map_err(|_| Error::TooLarge {
        size: body.len(),
        limit: u32::MAX as usize,
    })?;
    let mut frame = BytesMut::with_capacity(HEADER + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame.freeze())
}

/// Reassembles frames from chunks, refusing any frame over `limit` bytes.
#[derive(Debug)]
pub struct Decoder {
    limit: usize,
    buffer: BytesMut,
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            buffer: BytesMut::new(),
        }
    }

    /// Appends a chunk of the stream. Refuses it when the frame it starts
    /// or continues is over the limit.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(chunk);
        self.check_header()
    }

    /// The length of the buffered frame, once its header is in.
    fn frame_len(&self) -> Option<usize> {
        let header: [u8; HEADER] = self.buffer.get(..HEADER)?.try_into().ok()?;
        Some(u32::from_be_bytes(header) as usize)
    }

    fn check_header(&self) -> Result<()> {
        match self.frame_len() {
            Some(size) if size > self.limit => Err(Error::TooLarge {
                size,
                limit: self.limit,
            }),
            _ => Ok(()),
        }
    }

    /// The next whole message, if one is buffered.
    pub fn decode<M: DeserializeOwned>(&mut self) -> Result<Option<M>> {
        self.check_header()?;
        let Some(size) = self.frame_len() else {
            return Ok(None);
        };
        if self.buffer.len() < HEADER + size {
            return Ok(None);
        }
        self.buffer.advance(HEADER);
        let body = self.buffer.split_to(size);
        if self.buffer.is_empty() {
            // Give a large frame's memory back rather than keep it.
            self.buffer = BytesMut::new();
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|source| Error::Malformed { source })
    }

    /// Whether part of a frame is buffered (the stream ends cleanly only
    /// between frames).
    pub fn in_frame(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// The end of the stream: an error when it cuts a frame short.
    pub fn finish(&self) -> Result<()> {
        if self.in_frame() {
            return Err(Error::Truncated {
                buffered: self.buffer.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;

    fn hello() -> Upstream {
        Upstream::Hello(Hello {
            pod: PodClaims {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "u-1".into(),
            },
            store: "vault".into(),
            secrets: vec!["shop/db".into(), "shop/api".into()],
            refresh_ms: 0,
        })
    }

    fn ack() -> Upstream {
        Upstream::Ack(Ack {
            request: RequestId(7),
            secret: "shop/db".into(),
            version: Some("3".into()),
            digest: None,
            reload: ReloadResult::Reloaded,
            error: None,
        })
    }

    #[test]
    fn frames_round_trip_whole_and_back_to_back() {
        let mut d = Decoder::new(MAX);
        let mut bytes = encode(&hello()).unwrap().to_vec();
        bytes.extend_from_slice(&encode(&ack()).unwrap());
        bytes.extend_from_slice(&encode(&Upstream::Ping).unwrap());
        d.push(&bytes).unwrap();
        assert_eq!(d.decode::<Upstream>().unwrap(), Some(hello()));
        assert_eq!(d.decode::<Upstream>().unwrap(), Some(ack()));
        assert_eq!(d.decode::<Upstream>().unwrap(), Some(Upstream::Ping));
        assert_eq!(d.decode::<Upstream>().unwrap(), None);
        assert!(!d.in_frame());
        d.finish().unwrap();
    }

    const MAX: usize = 1024;

    #[test]
    fn a_frame_split_anywhere_comes_out_once_and_whole() {
        let frame = encode(&hello()).unwrap();
        for cut in 0..=frame.len() {
            let mut d = Decoder::new(MAX);
            d.push(&frame[..cut]).unwrap();
            if cut < frame.len() {
                assert_eq!(d.decode::<Upstream>().unwrap(), None, "cut at {cut}");
                assert_eq!(d.in_frame(), cut > 0);
            }
            d.push(&frame[cut..]).unwrap();
            assert_eq!(
                d.decode::<Upstream>().unwrap(),
                Some(hello()),
                "cut at {cut}"
            );
            assert_eq!(d.decode::<Upstream>().unwrap(), None);
        }
        // Byte by byte, as a peer trickling would send it.
        let mut d = Decoder::new(MAX);
        let mut out = Vec::new();
        for b in &frame {
            d.push(&[*b]).unwrap();
            if let Some(m) = d.decode::<Upstream>().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, [hello()]);
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_header() {
        let mut d = Decoder::new(MAX);
        // Only the header of a 1 GiB frame: refused before any body.
        let err = d.push(&(1u32 << 30).to_be_bytes()).unwrap_err();
        assert!(matches!(err, Error::TooLarge { size, limit: MAX } if size == 1 << 30));
        assert_eq!(err.metric_label(), "too_large");
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        // A header split across chunks is caught when complete.
        let mut d = Decoder::new(MAX);
        d.push(&[0, 0]).unwrap();
        assert!(matches!(d.push(&[4, 1]), Err(Error::TooLarge { .. })));
        // Exactly at the limit passes the header check.
        let mut d = Decoder::new(MAX);
        d.push(&(MAX as u32).to_be_bytes()).unwrap();
        assert_eq!(d.decode::<Upstream>().unwrap(), None);
    }

    #[test]
    fn garbage_is_malformed_not_a_message() {
        for body in [
            &b"not json"[..],
            br#"{"type":"launch"}"#,
            br#"{"type":"ack","request":1,"secret":"a","reload":"failed","extra":1}"#,
            br#"{"type":"ack","request":1}"#,
            br#"[1,2,3]"#,
            b"",
        ] {
            let mut d = Decoder::new(MAX);
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body);
            d.push(&frame).unwrap();
            let err = d.decode::<Upstream>().unwrap_err();
            assert!(matches!(err, Error::Malformed { .. }), "{body:?}: {err}");
            assert_eq!(err.kind(), ErrorKind::Malformed);
        }
    }

    #[test]
    fn a_stream_cut_mid_frame_is_truncated() {
        let frame = encode(&ack()).unwrap();
        let mut d = Decoder::new(MAX);
        d.push(&frame[..frame.len() - 1]).unwrap();
        assert_eq!(d.decode::<Upstream>().unwrap(), None);
        let err = d.finish().unwrap_err();
        assert!(matches!(err, Error::Truncated { buffered } if buffered == frame.len() - 1));
    }

    #[test]
    fn the_wire_names_the_variant_in_a_type_field() {
        let frame = encode(&Downstream::Pin(Pin {
            request: RequestId(1),
            secret: "shop/db".into(),
            version: "4".into(),
        }))
        .unwrap();
        assert_eq!(
            &frame[4..],
            br#"{"type":"pin","request":1,"secret":"shop/db","version":"4"}"#
        );
        let problem = Downstream::Error(Problem::new(ErrorKind::NotLeader, "dial again"));
        let frame = encode(&problem).unwrap();
        assert_eq!(
            &frame[4..],
            br#"{"type":"error","kind":"notLeader","message":"dial again"}"#
        );
    }
}
