//! The InfluxDB writer: v2 (`/api/v2/write`, org, bucket, token) and v1 (`/write`, db, rp,
//! basic auth) write APIs over reqwest with rustls, gzip-compressed bodies, and the retry
//! rules of a store that may be restarting or overloaded:
//! - connection errors, timeouts, 429 and 5xx: retry with exponential backoff and jitter,
//!   honouring `Retry-After`;
//! - 401, 403, 404 and other 4xx about the request rather than the data (a revoked token, a
//!   bucket or database not created yet, a wrong URL): errors a person can fix; the data is
//!   held (it stays in the buffer), retried with backoff, logged once with what to fix, and
//!   `/readyz` fails until it is delivered. After a 401/403 the token or password is read
//!   again (on the blocking pool) before each retry, so a rotated `token_file` /
//!   `password_file` is used without a signal;
//! - 400 and 422 (the store refuses lines): the refused lines are isolated and go to the
//!   dead-letter file with the server's reason; every other line is sent again until it is
//!   delivered (correct whether the store wrote the good lines of a partial write, as
//!   InfluxDB 1.x/2.x/3 do, or nothing: a line carries its timestamp, so sending it twice
//!   stores it once). What the refusal names is used first (`isolate.rs`: the measurement
//!   and field of a type conflict, InfluxDB 3's line numbers): the named lines are sent
//!   alone, the others apart. Otherwise, or when the named lines are not all refused, the
//!   series (measurement + tag set) are halved; within one refused series the lines carrying
//!   the named field are refused and the others sent again, and without a field its lines
//!   are bisected. There is no cap: isolation costs requests, never good lines. A (series,
//!   field) found refused is remembered: in later batches its lines go to the dead-letter
//!   file (counted as rejected) without a request, and one of its lines is sent alone every
//!   30 s until the store accepts it again;
//! - 413 (body too large): split the batch in two and write each half; a single line that is
//!   still too large goes to the dead-letter file.
//!
//! A body is compressed once per piece, on the blocking pool, not on every retry. Every HTTP
//! request is counted (`linetap_sink_requests_total`).

use super::isolate::{self, FieldHint, Hint, Refusals, Span};
use crate::backoff::Backoff;
use crate::config::{InfluxApi, InfluxConfig, Secret};
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
use tokio::time::Instant;

/// Most bytes of an error response read (a misbehaving server cannot make us buffer more);
/// all of it is searched for what the refusal names, the first 300 characters are kept as
/// the reason.
const MAX_ERROR_BODY: usize = 4096;

/// The longest `Retry-After` we honour; a longer one is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

pub struct InfluxWriter {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Option<HeaderValue>,
    /// Where the credentials come from, to read them again after a 401/403.
    creds: Option<Credentials>,
    gzip: bool,
    backoff: Backoff,
    dead_letter: DeadLetter,
    /// The v2 API has an unsigned integer type; 1.x has none.
    unsigned: bool,
    /// The (series, field) pairs the store keeps refusing.
    refusals: Refusals,
}

/// How a secret becomes the Authorization header.
#[derive(Debug, Clone)]
enum Scheme {
    /// v2: `Token <token>`.
    Token,
    /// v1: basic auth with this username and the secret as password.
    Basic(String),
}

#[derive(Debug)]
struct Credentials {
    scheme: Scheme,
    secret: Secret,
    /// The value the header was built from.
    value: String,
    /// A failed re-read was logged (logged once until one succeeds).
    read_failed: bool,
}

impl Scheme {
    fn header(&self, secret: &str) -> Result<HeaderValue, String> {
        let text = match self {
            Scheme::Token => format!("Token {secret}"),
            Scheme::Basic(user) => {
                format!("Basic {}", base64(format!("{user}:{secret}").as_bytes()))
            }
        };
        HeaderValue::from_str(&text)
            .map(|mut h| {
                h.set_sensitive(true);
                h
            })
            .map_err(|_| {
                "the credentials contain characters not allowed in an HTTP header".to_string()
            })
    }
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
    /// 400 / 422: some line of the body is refused for good; what the body names.
    BadData {
        reason: String,
        hint: Option<Hint>,
    },
}

/// How one piece of a body ended.
enum Piece {
    Delivered,
    TooLarge,
    BadData(String, Option<Hint>),
    Abandoned(String),
}

/// Lines of a batch still to be sent together, and what is known of them.
struct Task {
    spans: Vec<Span>,
    /// The field a refusal of an ancestor named.
    field: Option<FieldHint>,
    /// The store named these lines (InfluxDB 3's line numbers) and they are sent alone.
    named: bool,
}

impl Task {
    fn new(spans: Vec<Span>, field: Option<FieldHint>) -> Self {
        Task {
            spans,
            field,
            named: false,
        }
    }
}

/// Lines of a batch bound for the dead-letter file, by reason.
#[derive(Default)]
struct Dead {
    entries: Vec<(String, Vec<Span>)>,
}

impl Dead {
    fn add(&mut self, reason: String, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        match self.entries.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, v)) => v.extend(spans),
            None => self.entries.push((reason, spans)),
        }
    }

    fn lines(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.len()).sum()
    }
}

/// Sorts a status that is not a success.
fn classify(status: StatusCode, reason: String, after: Option<Duration>) -> Attempt {
    match status.as_u16() {
        413 => Attempt::TooLarge,
        400 | 422 => Attempt::BadData { reason, hint: None },
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
        let source = match cfg.api {
            InfluxApi::V2 => {
                url.query_pairs_mut()
                    .append_pair("org", &cfg.org)
                    .append_pair("bucket", &cfg.bucket)
                    .append_pair("precision", "ns");
                cfg.token.as_ref().map(|t| (Scheme::Token, t.clone()))
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
                    (Some(u), Some(p)) => Some((Scheme::Basic(u.clone()), p.clone())),
                    _ => None,
                }
            }
        };
        let (auth, creds) = match source {
            Some((scheme, secret)) => {
                let value = secret.resolve()?;
                let header = scheme.header(&value)?;
                (
                    Some(header),
                    Some(Credentials {
                        scheme,
                        secret,
                        value,
                        read_failed: false,
                    }),
                )
            }
            None => (None, None),
        };
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
            creds,
            gzip: cfg.gzip,
            // A store that comes back is found within 5 s; the backlog then drains at full speed.
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            dead_letter,
            unsigned: cfg.api == InfluxApi::V2,
            refusals: Refusals::default(),
        })
    }

    /// Reads the token or password again (after a 401/403) on the blocking pool; a changed
    /// value replaces the Authorization header. A file that cannot be read keeps the current
    /// credentials (logged once).
    async fn reread_credentials(&mut self) {
        let Some(creds) = &mut self.creds else {
            return;
        };
        let secret = creds.secret.clone();
        let read = tokio::task::spawn_blocking(move || secret.resolve())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let value = match read {
            Ok(v) => {
                creds.read_failed = false;
                v
            }
            Err(e) => {
                if !creds.read_failed {
                    tracing::warn!(url = %self.url.path(), error = %e, "cannot read the credentials again; retrying with the ones read before");
                    creds.read_failed = true;
                }
                return;
            }
        };
        if value == creds.value {
            return;
        }
        match creds.scheme.header(&value) {
            Ok(h) => {
                tracing::info!(url = %self.url.path(), "the credentials changed; retrying with the new ones");
                self.auth = Some(h);
                creds.value = value;
            }
            Err(e) => {
                if !creds.read_failed {
                    tracing::warn!(url = %self.url.path(), error = %e, "the new credentials cannot be used; retrying with the ones read before");
                    creds.read_failed = true;
                }
            }
        }
    }

    /// The request body of one piece: compressed once (on the blocking pool), reused by
    /// every retry.
    async fn prepare(&self, raw: Bytes) -> Bytes {
        if !self.gzip {
            return raw;
        }
        let input = raw.clone();
        let gz = tokio::task::spawn_blocking(move || {
            let mut enc = GzEncoder::new(Vec::with_capacity(input.len() / 4), Compression::fast());
            enc.write_all(&input).and_then(|_| enc.finish())
        })
        .await;
        match gz {
            Ok(Ok(gz)) => Bytes::from(gz),
            // Compression cannot fail on a Vec; if it did, send the body as it is.
            _ => raw,
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
        match classify(status, reason, after) {
            Attempt::BadData { reason, .. } => Attempt::BadData {
                reason,
                hint: isolate::parse_hint(&text),
            },
            other => other,
        }
    }

    /// Writes one piece, retrying while the store is unreachable or holds it back, until it
    /// is delivered, refused, or shutdown gives up.
    async fn write_piece(&mut self, piece: Bytes, retry: &mut RetryCtl) -> Piece {
        if piece.is_empty() {
            return Piece::Delivered;
        }
        let body = self.prepare(piece).await;
        let mut logged: Option<Held> = None;
        let mut logged_retry = false;
        let mut reread = false;
        loop {
            // After a 401/403, the credentials are read again before each retry.
            if reread {
                self.reread_credentials().await;
            }
            retry.metrics.write_requests.fetch_add(1, Relaxed);
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
                Attempt::BadData { reason, hint } => {
                    m.errors_bad_request.fetch_add(1, Relaxed);
                    return Piece::BadData(reason, hint);
                }
                Attempt::Held { why, reason } => {
                    let (counter, fix) = match why {
                        Held::Unauthorized => (&m.errors_unauthorized, "the store refuses the credentials: check the token or username/password (token_file, password_file: read again before each retry) and the user's write permission"),
                        Held::NotFound => (&m.errors_not_found, "the store has no such bucket, org or database: create it, or fix the sink's bucket/org/database"),
                        Held::Refused => (&m.errors_bad_request, "the store refuses the request itself: check the sink's url and api"),
                    };
                    counter.fetch_add(1, Relaxed);
                    if logged != Some(why) {
                        tracing::error!(url = %self.url.path(), %reason, fix, "write refused; the data is held in the buffer and retried until this is fixed");
                        logged = Some(why);
                    }
                    m.set_held(&format!("{reason} ({fix})"));
                    reread = why == Held::Unauthorized;
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

    /// Remembers that the store refused `field` of `line`'s series (unless the refusal is
    /// about the line's time, not its series).
    fn remember(&mut self, line: &[u8], field: &[u8], reason: &str) {
        if isolate::about_time(reason) {
            return;
        }
        let series = isolate::series_key(line);
        let now_ns = crate::model::now_ns();
        if self
            .refusals
            .remember(series, field, reason, Instant::now(), now_ns)
        {
            tracing::warn!(
                url = %self.url.path(),
                series = %String::from_utf8_lossy(series),
                field = %String::from_utf8_lossy(field),
                %reason,
                remembered = self.refusals.len(),
                "the store refuses this field of this series: its lines go to the dead-letter file without a request, and one is sent again every {} s",
                self.refusals.probe_every.as_secs()
            );
        }
    }

    /// A refused group of lines: what to send next (`stack`) and what is refused (`dead`).
    fn refused(
        &mut self,
        body: &[u8],
        task: Task,
        reason: String,
        hint: Option<Hint>,
        stack: &mut Vec<Task>,
        dead: &mut Dead,
    ) {
        let spans = task.spans;
        let field = match &hint {
            Some(Hint::Field(f)) => Some(f.clone()),
            _ => task.field,
        };
        if let [one] = spans.as_slice() {
            let line = &body[one.clone()];
            let key = match &field {
                Some(f) if f.names(line) => f.field.as_bytes().to_vec(),
                _ => isolate::field_keys(line)
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
            };
            self.remember(line, &key, &reason);
            dead.add(reason, spans);
            return;
        }
        if let Some(h) = &hint {
            let (named, rest) = isolate::split_by_hint(body, &spans, h);
            if !named.is_empty() && !rest.is_empty() {
                // Verify the hint: the named lines alone, the others apart.
                stack.push(Task::new(rest, None));
                stack.push(Task {
                    spans: named,
                    field: field.clone(),
                    named: matches!(h, Hint::Lines(_)),
                });
                return;
            }
            if matches!(h, Hint::Lines(_)) && task.named && rest.is_empty() {
                // Named twice, the second time alone: each of them is refused.
                for s in &named {
                    let line = &body[s.clone()];
                    let key = isolate::field_keys(line)
                        .into_iter()
                        .next()
                        .unwrap_or_default();
                    self.remember(line, &key, &reason);
                }
                dead.add(reason, named);
                return;
            }
        }
        let groups = isolate::by_series(body, &spans);
        if groups.len() > 1 {
            let (a, b) = isolate::halve(groups);
            stack.push(Task::new(b.concat(), field.clone()));
            stack.push(Task::new(a.concat(), field));
            return;
        }
        // One series: with a field named, its lines carrying that field are the refused ones.
        if let Some(f) = &field {
            let (carrying, others): (Vec<Span>, Vec<Span>) = spans
                .iter()
                .cloned()
                .partition(|s| f.names(&body[s.clone()]));
            if !carrying.is_empty() {
                self.remember(&body[carrying[0].clone()], f.field.as_bytes(), &reason);
                dead.add(reason, carrying);
                if !others.is_empty() {
                    stack.push(Task::new(others, None));
                }
                return;
            }
        }
        let (a, b) = isolate::halve(spans);
        stack.push(Task::new(b, field.clone()));
        stack.push(Task::new(a, field));
    }

    /// Sends the lines of remembered refusals due for a probe, one line each, alone; returns
    /// the lines probed, or why the batch was abandoned.
    async fn probe(
        &mut self,
        body: &[u8],
        spans: &[Span],
        retry: &mut RetryCtl,
        dead: &mut Dead,
    ) -> Result<Vec<Span>, String> {
        let due = self.refusals.due(body, spans, Instant::now());
        let mut probed = Vec::with_capacity(due.len());
        for (series, field, span) in due {
            probed.push(span.clone());
            match self
                .write_piece(
                    isolate::join(body, std::slice::from_ref(&span)).into(),
                    retry,
                )
                .await
            {
                Piece::Delivered => {
                    if let Some(r) = self.refusals.forget(&series, &field) {
                        tracing::info!(
                            url = %self.url.path(),
                            series = %String::from_utf8_lossy(&series),
                            field = %String::from_utf8_lossy(&field),
                            refused_since_ns = r.since_ns,
                            "the store accepts this field of this series again; its lines are sent again"
                        );
                    }
                }
                Piece::Abandoned(r) => return Err(r),
                Piece::TooLarge => {
                    dead.add("HTTP 413: larger than the store accepts".into(), vec![span])
                }
                Piece::BadData(reason, _) => {
                    self.remember(&body[span.clone()], &field, &reason);
                    dead.add(reason, vec![span]);
                }
            }
        }
        Ok(probed)
    }
}

impl LineWriter for InfluxWriter {
    fn unsigned(&self) -> bool {
        self.unsigned
    }

    async fn write(&mut self, body: &Bytes, _lines: usize, retry: &mut RetryCtl) -> Outcome {
        let mut dead = Dead::default();
        // The common case, nothing refused lately: the body as it is, in one request; its
        // lines are split apart only when the store refuses it.
        let mut first: Option<Piece> = None;
        if self.refusals.is_empty() {
            match self.write_piece(body.clone(), retry).await {
                Piece::Delivered => return Outcome::Delivered,
                Piece::Abandoned(r) => return Outcome::Abandoned(r),
                refused => first = Some(refused),
            }
        }
        let all = isolate::lines(body);
        let probed = match self.probe(body, &all, retry, &mut dead).await {
            Ok(p) => p,
            Err(r) => return Outcome::Abandoned(r),
        };
        let rest: Vec<Span> = if probed.is_empty() {
            all
        } else {
            all.into_iter().filter(|s| !probed.contains(s)).collect()
        };
        // Groups of lines still to send; a refused group is divided until the refused lines
        // are isolated. Lines of remembered refusals are taken out before each request.
        let mut stack = Vec::new();
        let whole = Task::new(rest, None);
        match first {
            // The whole body was refused already: divide it without sending it again.
            Some(Piece::TooLarge) if whole.spans.len() > 1 => {
                let (a, b) = isolate::halve(whole.spans);
                stack.push(Task::new(b, None));
                stack.push(Task::new(a, None));
            }
            Some(Piece::BadData(reason, hint)) => {
                self.refused(body, whole, reason, hint, &mut stack, &mut dead)
            }
            _ => stack.push(whole),
        }
        while let Some(mut task) = stack.pop() {
            let (send, known) = self.refusals.sort(body, std::mem::take(&mut task.spans));
            for (reason, spans) in known {
                dead.add(reason, spans);
            }
            if send.is_empty() {
                continue;
            }
            task.spans = send;
            match self
                .write_piece(isolate::join(body, &task.spans).into(), retry)
                .await
            {
                Piece::Delivered => {}
                Piece::Abandoned(r) => return Outcome::Abandoned(r),
                Piece::TooLarge if task.spans.len() == 1 => {
                    dead.add("HTTP 413: larger than the store accepts".into(), task.spans)
                }
                Piece::TooLarge => {
                    let (a, b) = isolate::halve(task.spans);
                    stack.push(Task::new(b, task.field.clone()));
                    stack.push(Task::new(a, task.field));
                }
                Piece::BadData(reason, hint) => {
                    self.refused(body, task, reason, hint, &mut stack, &mut dead)
                }
            }
        }
        let rejected = dead.lines();
        if rejected == 0 {
            return Outcome::Delivered;
        }
        let last_reason = dead
            .entries
            .last()
            .map(|(r, _)| r.clone())
            .unwrap_or_default();
        let entries: Vec<(String, Vec<u8>)> = dead
            .entries
            .into_iter()
            .map(|(reason, spans)| (reason, isolate::join(body, &spans)))
            .collect();
        if let Err(e) = self.dead_letter.write_all(entries).await {
            tracing::error!(file = %self.dead_letter.path().display(), error = %e, "cannot write the dead-letter file; the refused lines are lost");
        }
        Outcome::Rejected {
            lines: rejected,
            reason: format!(
                "{last_reason} (written to {})",
                self.dead_letter.path().display()
            ),
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
        assert!(matches!(c(400), Attempt::BadData { .. }));
        assert!(matches!(c(422), Attempt::BadData { .. }));
        assert_eq!(c(413), Attempt::TooLarge);
        assert!(matches!(c(429), Attempt::Retry { .. }));
        assert!(matches!(c(503), Attempt::Retry { .. }));
    }

    /// A scripted store on loopback: `answer(lines of the request)` returns the status and
    /// body; the lines it calls good are recorded as stored.
    struct Store {
        url: String,
        stored: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    type Answer = fn(&[String]) -> (u16, String, Vec<String>);

    async fn store(answer: Answer) -> Store {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stored = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (st, rq) = (stored.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (st, rq) = (st.clone(), rq.clone());
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut r = BufReader::new(r);
                    loop {
                        let mut len = 0usize;
                        let mut first = true;
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if h == "\r\n" && !first {
                                break;
                            }
                            first = false;
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        rq.fetch_add(1, Relaxed);
                        let lines: Vec<String> = String::from_utf8_lossy(&body)
                            .lines()
                            .map(str::to_string)
                            .collect();
                        let (status, text, good) = answer(&lines);
                        st.lock().unwrap().extend(good);
                        let head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if w.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Store {
            url,
            stored,
            requests,
        }
    }

    fn writer(url: &str, dir: &std::path::Path) -> InfluxWriter {
        let cfg = InfluxConfig {
            url: url.to_string(),
            api: InfluxApi::V1,
            org: String::new(),
            bucket: String::new(),
            token: None,
            database: "db".into(),
            retention_policy: None,
            username: None,
            password: None,
            timeout: Duration::from_secs(5),
            gzip: false,
        };
        InfluxWriter::new(&cfg, DeadLetter::new(dir, "s")).unwrap()
    }

    fn retry_ctl() -> (crate::shutdown::Trigger, RetryCtl) {
        let (trigger, shutdown) = crate::shutdown::channel();
        let ctl = RetryCtl::new(
            shutdown,
            Duration::from_secs(1),
            Default::default(),
            crate::observe::liveness::Beat::unwatched(),
        );
        (trigger, ctl)
    }

    /// Five devices × 5 series, one poll each at `t`.
    fn batch(t: u64) -> Vec<u8> {
        let mut b = Vec::new();
        for d in 0..5 {
            for i in 0..5 {
                b.extend_from_slice(format!("m,device=dev{d},i={i} value=1.5 {t}\n").as_bytes());
            }
        }
        b
    }

    /// Refuses any request with a line of dev4 and stores nothing of it; while `ACCEPT_DEV4`
    /// is set, accepts everything.
    static ACCEPT_DEV4: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    fn whole(lines: &[String]) -> (u16, String, Vec<String>) {
        if !ACCEPT_DEV4.load(Relaxed) && lines.iter().any(|l| l.contains("device=dev4,")) {
            let body = r#"{"error":"partial write: field type conflict: input field \"value\" on measurement \"m\" is type float, already exists as type integer dropped=1"}"#;
            return (400, body.into(), Vec::new());
        }
        (204, String::new(), lines.to_vec())
    }

    #[tokio::test]
    async fn a_hint_naming_a_shared_field_costs_no_good_line_and_the_series_is_remembered() {
        let s = store(whole).await;
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(&s.url, dir.path());
        w.refusals.probe_every = Duration::from_millis(300);
        let (_t, mut retry) = retry_ctl();
        let first = Bytes::from(batch(1));
        let out = w.write(&first, 25, &mut retry).await;
        assert!(matches!(out, Outcome::Rejected { lines: 5, .. }), "{out:?}");
        let stored = s.stored.lock().unwrap().clone();
        assert_eq!(stored.len(), 20);
        assert!(stored.iter().all(|l| !l.contains("dev4")));
        let isolating = s.requests.load(Relaxed);
        assert_eq!(w.refusals.len(), 5);
        // Later batches: one request, dev4's lines dead-lettered without one.
        let out = w.write(&batch(2).into(), 25, &mut retry).await;
        assert!(matches!(out, Outcome::Rejected { lines: 5, .. }), "{out:?}");
        assert_eq!(s.requests.load(Relaxed), isolating + 1);
        assert_eq!(
            retry.metrics.write_requests.load(Relaxed) as usize,
            isolating + 1
        );
        let dead = std::fs::read_to_string(dir.path().join("dead-letter/s.lp")).unwrap();
        assert_eq!(dead.lines().filter(|l| !l.starts_with('#')).count(), 10);
        assert!(dead.contains("sent here without a request"), "{dead}");
        // The store accepts dev4 again: after the probe interval one line of each series is
        // probed alone, the pairs are forgotten and the rest goes in one request.
        ACCEPT_DEV4.store(true, Relaxed);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let before = s.requests.load(Relaxed);
        assert_eq!(
            w.write(&batch(3).into(), 25, &mut retry).await,
            Outcome::Delivered
        );
        assert_eq!(s.requests.load(Relaxed), before + 5 + 1);
        assert!(w.refusals.is_empty());
        ACCEPT_DEV4.store(false, Relaxed);
    }

    /// InfluxDB 3: writes the good lines, names the refused ones by 1-based line number.
    fn numbered(lines: &[String]) -> (u16, String, Vec<String>) {
        let bad: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("value=\"x\""))
            .map(|(i, _)| i + 1)
            .collect();
        let good = lines
            .iter()
            .filter(|l| !l.contains("value=\"x\""))
            .cloned()
            .collect();
        if bad.is_empty() {
            return (204, String::new(), good);
        }
        let data: Vec<String> = bad
            .iter()
            .map(|n| format!(r#"{{"original_line":"…","line_number":{n},"error_message":"invalid column type"}}"#))
            .collect();
        (
            400,
            format!(
                r#"{{"error":"partial write of line protocol occurred","data":[{}]}}"#,
                data.join(",")
            ),
            good,
        )
    }

    #[tokio::test]
    async fn influxdb3_line_numbers_name_the_refused_lines() {
        let s = store(numbered).await;
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(&s.url, dir.path());
        let (_t, mut retry) = retry_ctl();
        // One series with a good and a bad field, others good.
        let body =
            b"m,d=a v=1 1\nm,d=b value=\"x\" 1\nm,d=b v=2 1\nm,d=c v=3 1\nm,d=b value=\"x\" 2\n";
        let out = w.write(&Bytes::from_static(body), 5, &mut retry).await;
        assert!(matches!(out, Outcome::Rejected { lines: 2, .. }), "{out:?}");
        // Refused, then the named lines alone (refused again), the rest once more.
        assert_eq!(s.requests.load(Relaxed), 3);
        let stored = s.stored.lock().unwrap().clone();
        for good in ["m,d=a v=1 1", "m,d=b v=2 1", "m,d=c v=3 1"] {
            assert!(stored.iter().any(|l| l == good), "{good}: {stored:?}");
        }
        // The refused field of that series is remembered, its other field is not.
        assert_eq!(w.refusals.len(), 1);
        let out = w
            .write(
                &Bytes::from_static(b"m,d=b value=\"x\" 3\nm,d=b v=4 3\n"),
                2,
                &mut retry,
            )
            .await;
        assert!(matches!(out, Outcome::Rejected { lines: 1, .. }), "{out:?}");
        assert_eq!(s.requests.load(Relaxed), 4);
    }
}
