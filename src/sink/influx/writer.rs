//! The InfluxDB writer: v2 (`/api/v2/write`, org, bucket, token) and v1 (`/write`, db, rp,
//! basic auth) write APIs over reqwest with rustls, gzip-compressed bodies, and the retry
//! rules of a store that may be restarting or overloaded:
//! - connection errors, timeouts, 429 and 5xx: retry with exponential backoff and jitter,
//!   honouring `Retry-After`;
//! - 401, 403, 404 and other 4xx about the request rather than the data (a revoked token, a
//!   bucket or database not created yet, a wrong URL): errors a person can fix; the data is
//!   held (it stays in the buffer), retried with backoff, logged once with what to fix, and
//!   `/readyz` fails until it is delivered;
//! - 400 and 422 (the store refuses a line): the batch is split until the refused lines are
//!   isolated; every other line is delivered, the refused ones go to the dead-letter file with
//!   the server's reason;
//! - 413 (body too large): split the batch in two at a line boundary and write each half; a
//!   single line that is still too large goes to the dead-letter file.
//!
//! A body is compressed once per piece, on the blocking pool, not on every retry.

use crate::backoff::Backoff;
use crate::config::{InfluxApi, InfluxConfig};
use crate::sink::deadletter::DeadLetter;
use crate::sink::lines::LineWriter;
use crate::sink::{Outcome, RetryCtl};
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Most splits spent isolating refused lines in one batch: a batch where many lines are
/// refused (a field type conflict on every poll) would otherwise cost thousands of requests;
/// the pieces still refused then go to the dead-letter file whole.
const MAX_SPLITS: usize = 256;

/// Most bytes of an error response read (a misbehaving server cannot make us buffer more).
const MAX_ERROR_BODY: usize = 4096;

/// The longest `Retry-After` we honour; a longer one is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

pub struct InfluxWriter {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Option<HeaderValue>,
    gzip: bool,
    backoff: Backoff,
    dead_letter: DeadLetter,
    /// The v2 API has an unsigned integer type; 1.x has none.
    unsigned: bool,
}

/// Why the store holds the data back: something a person has to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Unauthorized,
    NotFound,
    Refused,
}

/// What one HTTP attempt came to.
#[derive(Debug, PartialEq)]
enum Attempt {
    Ok,
    /// The store is unreachable or overloaded: retry.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// A person has to fix something (credentials, a missing bucket): hold and retry.
    Held {
        why: Held,
        reason: String,
    },
    /// 413.
    TooLarge,
    /// 400 / 422: some line of the body is refused for good.
    BadData(String),
}

/// How one piece of a body ended.
enum Piece {
    Delivered,
    TooLarge,
    BadData(String),
    Abandoned(String),
}

/// Sorts a status that is not a success.
fn classify(status: StatusCode, reason: String, after: Option<Duration>) -> Attempt {
    match status.as_u16() {
        413 => Attempt::TooLarge,
        400 | 422 => Attempt::BadData(reason),
        401 | 403 => Attempt::Held {
            why: Held::Unauthorized,
            reason,
        },
        404 => Attempt::Held {
            why: Held::NotFound,
            reason,
        },
        429 => Attempt::Retry { reason, after },
        s if s >= 500 => Attempt::Retry { reason, after },
        _ => Attempt::Held {
            why: Held::Refused,
            reason,
        },
    }
}

impl InfluxWriter {
    /// Builds the writer; resolves the credentials now, so a missing token fails at start-up.
    pub fn new(cfg: &InfluxConfig, dead_letter: DeadLetter) -> Result<Self, String> {
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
            dead_letter,
            unsigned: cfg.api == InfluxApi::V2,
        })
    }

    /// The request body of one piece: compressed once (on the blocking pool), reused by
    /// every retry.
    async fn prepare(&self, piece: &[u8]) -> Bytes {
        if !self.gzip {
            return Bytes::copy_from_slice(piece);
        }
        let raw = piece.to_vec();
        let gz = tokio::task::spawn_blocking(move || {
            let mut enc = GzEncoder::new(Vec::with_capacity(raw.len() / 4), Compression::fast());
            enc.write_all(&raw).and_then(|_| enc.finish())
        })
        .await;
        match gz {
            Ok(Ok(gz)) => Bytes::from(gz),
            // Compression cannot fail on a Vec; if it did, send the body as it is.
            _ => Bytes::copy_from_slice(piece),
        }
    }

    async fn attempt(&self, body: Bytes) -> Attempt {
        let mut req = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8");
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        let resp = match req.body(body).send().await {
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
        let text = read_capped(resp, MAX_ERROR_BODY).await;
        let reason = format!(
            "HTTP {status}: {}",
            text.trim().chars().take(300).collect::<String>()
        );
        classify(status, reason, after)
    }

    /// Writes one piece, retrying while the store is unreachable or holds it back, until it
    /// is delivered, refused, or shutdown gives up.
    async fn write_piece(&mut self, piece: &[u8], retry: &mut RetryCtl) -> Piece {
        let body = self.prepare(piece).await;
        let mut logged: Option<Held> = None;
        let mut logged_retry = false;
        loop {
            let attempt = self.attempt(body.clone()).await;
            let m = &retry.metrics;
            let delay = match attempt {
                Attempt::Ok => {
                    if logged.is_some() || logged_retry {
                        tracing::info!(url = %self.url.path(), "write succeeded again");
                    }
                    m.set_held("");
                    self.backoff.reset();
                    return Piece::Delivered;
                }
                Attempt::TooLarge => return Piece::TooLarge,
                Attempt::BadData(reason) => {
                    m.errors_bad_request.fetch_add(1, Relaxed);
                    return Piece::BadData(reason);
                }
                Attempt::Held { why, reason } => {
                    let (counter, fix) = match why {
                        Held::Unauthorized => (&m.errors_unauthorized, "the store refuses the credentials: check the token or username/password (token_file, password_file) and the user's write permission"),
                        Held::NotFound => (&m.errors_not_found, "the store has no such bucket, org or database: create it, or fix the sink's bucket/org/database"),
                        Held::Refused => (&m.errors_bad_request, "the store refuses the request itself: check the sink's url and api"),
                    };
                    counter.fetch_add(1, Relaxed);
                    if logged != Some(why) {
                        tracing::error!(url = %self.url.path(), %reason, fix, "write refused; the data is held in the buffer and retried until this is fixed");
                        logged = Some(why);
                    }
                    m.set_held(&format!("{reason} ({fix})"));
                    self.backoff.next_delay()
                }
                Attempt::Retry { reason, after } => {
                    m.errors_unavailable.fetch_add(1, Relaxed);
                    if !logged_retry {
                        tracing::warn!(url = %self.url.path(), %reason, "write failed; retrying with backoff");
                        logged_retry = true;
                    }
                    after.unwrap_or_else(|| self.backoff.next_delay())
                }
            };
            if !retry.wait(delay).await {
                return Piece::Abandoned("shutdown while the store was not accepting".into());
            }
        }
    }

    /// Sends lines the store refused for good to the dead-letter file.
    async fn dead_letter(&self, reason: &str, lines: &[u8]) {
        if let Err(e) = self.dead_letter.write(reason, lines).await {
            tracing::error!(file = %self.dead_letter.path().display(), error = %e, "cannot write the dead-letter file; the refused lines are lost");
        }
    }
}

impl LineWriter for InfluxWriter {
    fn unsigned(&self) -> bool {
        self.unsigned
    }

    async fn write(&mut self, body: &[u8], _lines: usize, retry: &mut RetryCtl) -> Outcome {
        // Pieces still to write, as byte ranges of `body`; a refused piece is split in two
        // until the refused lines are isolated.
        let mut pending = vec![(0usize, body.len())];
        let mut rejected = 0usize;
        let mut last_reason = String::new();
        let mut splits = 0usize;
        while let Some((start, end)) = pending.pop() {
            let piece = &body[start..end];
            let refused = match self.write_piece(piece, retry).await {
                Piece::Delivered => continue,
                Piece::Abandoned(r) => return Outcome::Abandoned(r),
                Piece::TooLarge => "HTTP 413: larger than the store accepts".to_string(),
                Piece::BadData(r) => r,
            };
            match split_point(piece) {
                Some(mid) if splits < MAX_SPLITS => {
                    splits += 1;
                    pending.push((start + mid, end));
                    pending.push((start, start + mid));
                }
                _ => {
                    let lines = piece.iter().filter(|&&b| b == b'\n').count().max(1);
                    rejected += lines;
                    let reason = if lines > 1 {
                        format!("{refused} (not isolated further: the batch used its {MAX_SPLITS} splits)")
                    } else {
                        refused
                    };
                    self.dead_letter(&reason, piece).await;
                    last_reason = reason;
                }
            }
        }
        if rejected == 0 {
            Outcome::Delivered
        } else {
            Outcome::Rejected {
                lines: rejected,
                reason: format!(
                    "{last_reason} (written to {})",
                    self.dead_letter.path().display()
                ),
            }
        }
    }
}

/// Reads at most `max` bytes of a response body.
async fn read_capped(mut resp: reqwest::Response, max: usize) -> String {
    let mut out = Vec::new();
    while out.len() < max {
        match resp.chunk().await {
            Ok(Some(c)) => out.extend_from_slice(&c[..c.len().min(max - out.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn statuses_a_person_can_fix_hold_the_data() {
        let c = |code: u16| classify(StatusCode::from_u16(code).unwrap(), "r".into(), None);
        assert_eq!(
            c(401),
            Attempt::Held {
                why: Held::Unauthorized,
                reason: "r".into()
            }
        );
        assert!(matches!(
            c(403),
            Attempt::Held {
                why: Held::Unauthorized,
                ..
            }
        ));
        assert!(matches!(
            c(404),
            Attempt::Held {
                why: Held::NotFound,
                ..
            }
        ));
        assert!(matches!(
            c(405),
            Attempt::Held {
                why: Held::Refused,
                ..
            }
        ));
        assert_eq!(c(400), Attempt::BadData("r".into()));
        assert_eq!(c(422), Attempt::BadData("r".into()));
        assert_eq!(c(413), Attempt::TooLarge);
        assert!(matches!(c(429), Attempt::Retry { .. }));
        assert!(matches!(c(503), Attempt::Retry { .. }));
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
