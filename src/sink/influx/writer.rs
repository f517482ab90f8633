//! The InfluxDB writer: v2 (`/api/v2/write`, org, bucket, token) and v1 (`/write`, db, rp,
//! basic auth) write APIs over reqwest with rustls, gzip-compressed bodies, and the retry
//! rules of a store that may be restarting or overloaded:
//! - connection errors, timeouts, 429 and 5xx: retry with exponential backoff and jitter,
//!   honouring `Retry-After`;
//! - 413 (body too large): split the batch in two at a line boundary and write each half;
//! - any other 4xx: the data will never be accepted; drop it, counted, with the reason.

use crate::backoff::Backoff;
use crate::config::{InfluxApi, InfluxConfig};
use crate::sink::lines::LineWriter;
use crate::sink::{Outcome, RetryCtl};
use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use std::io::Write;
use std::time::Duration;

/// The longest `Retry-After` we honour; a longer one is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

pub struct InfluxWriter {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Option<HeaderValue>,
    gzip: bool,
    backoff: Backoff,
}

/// What one HTTP attempt came to.
enum Attempt {
    Ok,
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    TooLarge,
    Reject(String),
}

impl InfluxWriter {
    /// Builds the writer; resolves the credentials now, so a missing token fails at start-up.
    pub fn new(cfg: &InfluxConfig) -> Result<Self, String> {
        let mut url = match cfg.api {
            InfluxApi::V2 => reqwest::Url::parse(&format!("{}/api/v2/write", cfg.url)),
            InfluxApi::V1 => reqwest::Url::parse(&format!("{}/write", cfg.url)),
        }
        .map_err(|e| format!("invalid url {:?}: {e}", cfg.url))?;
        let auth = match cfg.api {
            InfluxApi::V2 => {
                url.query_pairs_mut()
                    .append_pair("org", &cfg.org)
                    .append_pair("bucket", &cfg.bucket)
                    .append_pair("precision", "ns");
                match &cfg.token {
                    Some(t) => Some(format!("Token {}", t.resolve()?)),
                    None => None,
                }
            }
            InfluxApi::V1 => {
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("db", &cfg.database)
                        .append_pair("precision", "n");
                    if let Some(rp) = &cfg.retention_policy {
                        q.append_pair("rp", rp);
                    }
                }
                match (&cfg.username, &cfg.password) {
                    (Some(u), Some(p)) => {
                        let creds = format!("{u}:{}", p.resolve()?);
                        Some(format!("Basic {}", base64(creds.as_bytes())))
                    }
                    _ => None,
                }
            }
        };
        let auth = auth
            .map(|a| {
                HeaderValue::from_str(&a).map(|mut h| {
                    h.set_sensitive(true);
                    h
                })
            })
            .transpose()
            .map_err(|_| {
                "the credentials contain characters not allowed in an HTTP header".to_string()
            })?;
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(2)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(InfluxWriter {
            client,
            url,
            auth,
            gzip: cfg.gzip,
            // A store that comes back is found within 5 s; the backlog then drains at full speed.
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
        })
    }

    async fn attempt(&self, body: &[u8]) -> Attempt {
        let mut req = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8");
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        req = if self.gzip {
            let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
            match enc.write_all(body).and_then(|_| enc.finish()) {
                Ok(gz) => req.header(CONTENT_ENCODING, "gzip").body(gz),
                Err(_) => req.body(body.to_vec()),
            }
        } else {
            req.body(body.to_vec())
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    reason: describe(&e),
                    after: None,
                }
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Attempt::Ok;
        }
        let after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let text = resp.text().await.unwrap_or_default();
        let reason = format!(
            "HTTP {status}: {}",
            text.trim().chars().take(300).collect::<String>()
        );
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Attempt::TooLarge
        } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Attempt::Retry { reason, after }
        } else {
            Attempt::Reject(reason)
        }
    }

    /// Writes one body, retrying until it is delivered, rejected, or shutdown gives up.
    async fn write_one(&mut self, body: &[u8], retry: &mut RetryCtl) -> Result<(), Outcome> {
        let mut logged = false;
        loop {
            match self.attempt(body).await {
                Attempt::Ok => {
                    if logged {
                        tracing::info!(url = %self.url.path(), "write succeeded again");
                    }
                    self.backoff.reset();
                    return Ok(());
                }
                Attempt::TooLarge => return Err(Outcome::Rejected("HTTP 413".into())),
                Attempt::Reject(reason) => return Err(Outcome::Rejected(reason)),
                Attempt::Retry { reason, after } => {
                    if !logged {
                        tracing::warn!(url = %self.url.path(), %reason, "write failed; retrying with backoff");
                        logged = true;
                    }
                    let delay = after.unwrap_or_else(|| self.backoff.next_delay());
                    if !retry.wait(delay).await {
                        return Err(Outcome::Abandoned(reason));
                    }
                }
            }
        }
    }
}

impl LineWriter for InfluxWriter {
    async fn write(&mut self, body: &[u8], _lines: usize, retry: &mut RetryCtl) -> Outcome {
        // Pieces still to write, as byte ranges of `body`; 413 splits a piece in two.
        let mut pending = vec![(0usize, body.len())];
        let mut rejected = None;
        while let Some((start, end)) = pending.pop() {
            let piece = &body[start..end];
            match self.write_one(piece, retry).await {
                Ok(()) => {}
                Err(Outcome::Rejected(r)) if r == "HTTP 413" => match split_point(piece) {
                    Some(mid) => {
                        pending.push((start + mid, end));
                        pending.push((start, start + mid));
                    }
                    None => rejected = Some("HTTP 413 for a single line".to_string()),
                },
                Err(Outcome::Rejected(r)) => rejected = Some(r),
                Err(other) => return other,
            }
        }
        match rejected {
            None => Outcome::Delivered,
            Some(r) => Outcome::Rejected(r),
        }
    }
}

/// Where to cut a body of several lines into two halves at a line boundary.
fn split_point(body: &[u8]) -> Option<usize> {
    let mid = body.len() / 2;
    let after = body[mid..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| mid + i + 1);
    let before = body[..mid].iter().rposition(|&b| b == b'\n').map(|i| i + 1);
    [after, before]
        .into_iter()
        .flatten()
        .find(|&p| p > 0 && p < body.len())
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Standard base64 (for HTTP basic auth); too small a need for a dependency.
fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn splits_at_line_boundaries() {
        let body = b"a 1\nbb 2\nccc 3\n";
        let p = split_point(body).unwrap();
        assert_eq!(body[p - 1], b'\n');
        assert!(p < body.len());
        assert_eq!(split_point(b"single 1\n"), None);
    }
}
