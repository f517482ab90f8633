//! The `[sinks.NAME]` keys of `type = "influxdb"`: URL, API version and its credentials
//! (never literal), timeout and gzip; validated with locations.

use crate::config::schema::InfluxApi;
use crate::config::table::RawTable;
use crate::config::units::ConfDuration;
use crate::config::validate::sinks::SinkDraft;
use crate::config::validate::Ctx;
use crate::config::Settings;
use crate::config::{is_loopback_url, Secret};
use crate::sink::{settings_of, BuildContext, Start};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

/// The keys of an influxdb sink (besides those every sink has).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxSinkSection {
    pub url: Option<Spanned<String>>,
    pub api: Option<Spanned<InfluxApi>>,
    pub org: Option<Spanned<String>>,
    pub bucket: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub database: Option<Spanned<String>>,
    pub retention_policy: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub timeout: Option<Spanned<ConfDuration>>,
    pub gzip: Option<Spanned<bool>>,
}

#[derive(Debug, Clone)]
pub struct InfluxConfig {
    pub url: String,
    pub api: InfluxApi,
    pub org: String,
    pub bucket: String,
    pub token: Option<Secret>,
    pub database: String,
    pub retention_policy: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub timeout: Duration,
    pub gzip: bool,
}

pub(crate) fn validate(
    cx: &mut Ctx,
    name: &Spanned<String>,
    span: Range<usize>,
    type_at: Range<usize>,
    s: &InfluxSinkSection,
) -> InfluxConfig {
    let url = match &s.url {
        Some(u) if u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://") => {
            u.get_ref().trim_end_matches('/').to_string()
        }
        Some(u) => {
            cx.err(
                u.span(),
                format!("url {:?} must start with http:// or https://", u.get_ref()),
            );
            String::new()
        }
        None => {
            cx.err(type_at, "an influxdb sink needs `url`");
            String::new()
        }
    };
    let api = s
        .api
        .as_ref()
        .map(|a| *a.get_ref())
        .unwrap_or(InfluxApi::V2);
    if let Some(t) = &s.token {
        cx.err(
            t.span(),
            "a literal token in the configuration file is not allowed: use token_file or token_env",
        );
    }
    if let Some(p) = &s.password {
        cx.err(p.span(), "a literal password in the configuration file is not allowed: use password_file or password_env");
    }
    let secret = |cx: &mut Ctx,
                  file: &Option<Spanned<String>>,
                  env: &Option<Spanned<String>>,
                  what: &str| match (file, env) {
        (Some(f), None) => Some(Secret::File(PathBuf::from(f.get_ref()))),
        (None, Some(e)) => Some(Secret::Env(e.get_ref().clone())),
        (Some(_), Some(e)) => {
            cx.err(
                e.span(),
                format!("give either {what}_file or {what}_env, not both"),
            );
            None
        }
        (None, None) => None,
    };
    let token = secret(cx, &s.token_file, &s.token_env, "token");
    let password = secret(cx, &s.password_file, &s.password_env, "password");
    match api {
        InfluxApi::V2 => {
            for (v, key) in [(&s.org, "org"), (&s.bucket, "bucket")] {
                if v.is_none() {
                    cx.err(
                        span.clone(),
                        format!("sink {:?}: the v2 API needs `{key}`", name.get_ref()),
                    );
                }
            }
            if token.is_none() && s.token.is_none() {
                cx.err(
                    span.clone(),
                    format!(
                        "sink {:?}: the v2 API needs credentials: token_file or token_env",
                        name.get_ref()
                    ),
                );
            }
            for (v, key) in [
                (&s.database, "database"),
                (&s.retention_policy, "retention_policy"),
                (&s.username, "username"),
                (&s.password_file, "password_file"),
                (&s.password_env, "password_env"),
            ] {
                if let Some(v) = v {
                    cx.err(v.span(), format!("`{key}` belongs to api = \"v1\"; the v2 API uses org, bucket and a token"));
                }
            }
        }
        InfluxApi::V1 => {
            if s.database.is_none() {
                cx.err(
                    span.clone(),
                    format!("sink {:?}: the v1 API needs `database`", name.get_ref()),
                );
            }
            if s.username.is_some() && password.is_none() && s.password.is_none() {
                cx.err(
                    span.clone(),
                    format!(
                        "sink {:?}: `username` needs password_file or password_env",
                        name.get_ref()
                    ),
                );
            }
            for (v, key) in [
                (&s.org, "org"),
                (&s.bucket, "bucket"),
                (&s.token_file, "token_file"),
                (&s.token_env, "token_env"),
            ] {
                if let Some(v) = v {
                    cx.err(v.span(), format!("`{key}` belongs to api = \"v2\"; the v1 API uses database and username/password"));
                }
            }
        }
    }
    InfluxConfig {
        url,
        api,
        org: s
            .org
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or_default(),
        bucket: s
            .bucket
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or_default(),
        token,
        database: s
            .database
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or_default(),
        retention_policy: s.retention_policy.as_ref().map(|v| v.get_ref().clone()),
        username: s.username.as_ref().map(|v| v.get_ref().clone()),
        password,
        timeout: s
            .timeout
            .as_ref()
            .map(|d| d.get_ref().0)
            .unwrap_or(Duration::from_secs(10)),
        // Compressing for a store on the same machine only costs CPU.
        gzip: s.gzip.as_ref().map(|g| *g.get_ref()).unwrap_or_else(|| {
            !is_loopback_url(s.url.as_ref().map(|u| u.get_ref().as_str()).unwrap_or(""))
        }),
    }
}

/// The InfluxDB sink kind (`sink::KINDS`).
pub struct Kind;

impl crate::sink::SinkKind for Kind {
    fn name(&self) -> &'static str {
        "influxdb"
    }
    fn keys(&self) -> &'static [&'static str] {
        crate::config::table::fields_of::<InfluxSinkSection>()
    }
    fn validate(&self, cx: &mut Ctx, raw: RawTable, d: &SinkDraft) -> Option<Settings> {
        let s: InfluxSinkSection = raw.finish(cx)?;
        let c = validate(cx, d.name, d.span.clone(), d.type_at.clone(), &s);
        Some(Settings::new(c))
    }
    fn build(&self, settings: &Settings, ctx: &BuildContext) -> Result<Box<dyn Start>, String> {
        let c: &InfluxConfig = settings_of(settings, self.name())?;
        Ok(Box::new(super::build(c, ctx)?))
    }
    fn describe(&self, settings: &Settings) -> String {
        let Some(i) = settings.get::<InfluxConfig>() else {
            return String::new();
        };
        format!(
            "influxdb {} {}{}",
            match i.api {
                InfluxApi::V1 => "v1",
                InfluxApi::V2 => "v2",
            },
            i.url,
            if i.gzip { " (gzip)" } else { "" }
        )
    }
    fn secrets<'a>(&self, settings: &'a Settings) -> Vec<&'a Secret> {
        settings
            .get::<InfluxConfig>()
            .map(|c| c.token.iter().chain(c.password.iter()).collect())
            .unwrap_or_default()
    }
}
