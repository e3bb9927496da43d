//! Frames over an HTTP/2 body, as both sides use them: a [`Reader`] over
//! the body that comes in, a [`Writer`] into the body that goes out
//! ([`Frames`]), and a [`Rate`] limit on the messages a peer sends.
//!
//! Every read has a deadline: `idle` while no frame is under way (the
//! peers ping well within it), and `frame` from the first byte of a frame
//! to its last, so a peer trickling bytes is cut off after `frame` however
//! slowly it sends. Every write has a deadline too: the outgoing body holds
//! few frames, so a peer that stops reading fills it (HTTP/2 flow control
//! stops the sending) and the next write times out.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{Decoder, Error, Result, encode};

/// Deadlines of a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Longest wait for the next frame to start.
    pub idle: Duration,
    /// Longest time from a frame's first byte to its last.
    pub frame: Duration,
}

/// Messages out of an incoming body.
pub struct Reader<B = Incoming> {
    body: B,
    decoder: Decoder,
    deadlines: Deadlines,
    /// When the frame under way started.
    started: Option<Instant>,
    /// When the last bytes came (the idle deadline counts from here, so a
    /// read cancelled and started again does not move it).
    last: Instant,
}

impl<B> Reader<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(body: B, max_frame: usize, deadlines: Deadlines) -> Self {
        Self {
            body,
            decoder: Decoder::new(max_frame),
            deadlines,
            started: None,
            last: Instant::now(),
        }
    }

    /// Changes how long the reader waits for the next frame.
    pub fn set_idle(&mut self, idle: Duration) {
        self.deadlines.idle = idle;
    }

    /// The next message; `None` when the peer ended the body between
    /// frames. Cancel-safe: a read dropped half-way loses nothing and
    /// keeps its deadlines.
    pub async fn next<M: DeserializeOwned>(&mut self) -> Result<Option<M>> {
        loop {
            if let Some(message) = self.decoder.decode()? {
                self.started = self.decoder.in_frame().then(Instant::now);
                return Ok(Some(message));
            }
            let (deadline, what, waited) = match self.started {
                Some(t) => (
                    t + self.deadlines.frame,
                    "whole frame",
                    self.deadlines.frame,
                ),
                None => (
                    self.last + self.deadlines.idle,
                    "message",
                    self.deadlines.idle,
                ),
            };
            let chunk = match tokio::time::timeout_at(deadline, next_frame(&mut self.body)).await {
                Err(_) => return Err(Error::Timeout { what, waited }),
                Ok(None) => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
                Ok(Some(Err(source))) => {
                    return Err(Error::Transport {
                        source: source.into(),
                    });
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            let Ok(data) = chunk.into_data() else {
                continue; // trailers
            };
            if data.is_empty() {
                continue;
            }
            self.last = Instant::now();
            if self.started.is_none() {
                self.started = Some(Instant::now());
            }
            self.decoder.push(&data)?;
        }
    }
}

/// The next frame of a body.
async fn next_frame<B: Body + Unpin>(
    body: &mut B,
) -> Option<std::result::Result<Frame<B::Data>, B::Error>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

/// The outgoing body: the frames a [`Writer`] queued, as HTTP/2 sends
/// them.
pub struct Frames(mpsc::Receiver<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Messages into an outgoing body, each under a deadline.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Bytes>,
    deadline: Duration,
}

/// Frames queued in an outgoing body before writes wait.
const QUEUE: usize = 4;

impl Writer {
    /// A writer and the body it writes into.
    pub fn new(deadline: Duration) -> (Self, Frames) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx, deadline }, Frames(rx))
    }

    /// Queues one message; fails when the peer does not take it within the
    /// deadline or the body is gone.
    pub async fn send<M: Serialize>(&self, message: &M) -> Result<()> {
        let frame = encode(message)?;
        match self.tx.send_timeout(frame, self.deadline).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Error::Timeout {
                what: "room to write",
                waited: self.deadline,
            }),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Error::Closed),
        }
    }
}

/// A token bucket: `per_second` messages a second in bursts of `burst`.
#[derive(Debug, Clone)]
pub struct Rate {
    per_second: u32,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Rate {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes one message's token, or says the peer is over its rate.
    pub fn take(&mut self) -> Result<()> {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * f64::from(self.per_second);
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            return Err(Error::RateLimited {
                per_second: self.per_second,
            });
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
