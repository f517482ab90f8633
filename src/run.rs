//! Wires a validated configuration into a running agent. Knows no protocol: it asks
//! `source::build` and `sink::build` for components, and owns the start-up order (sinks, the
//! catalog, the buffer, the sources) and the shutdown order (stop the sources, let the buffer
//! write everything, let every sink deliver within the grace period, report).

use crate::buffer::{Buffer, SinkSlot};
use crate::component::{fingerprint, ComponentId, Kind};
use crate::config::Config;
use crate::model::catalog::{tags, Registry};
use crate::observe::metrics::Metrics;
use crate::shutdown::{self, Trigger};
use crate::sink::{self, SinkContext, SinkLoop};
use crate::source::{self, catalogs::Catalogs, Source, SourceContext};
use crate::transform;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A running component: its identity, what stops it, and its task.
struct Running {
    id: ComponentId,
    trigger: Trigger,
    task: JoinHandle<()>,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub started: Vec<ComponentId>,
    pub restarted: Vec<ComponentId>,
    pub stopped: Vec<ComponentId>,
    pub unchanged: usize,
    /// Sections that changed but only apply at the next start.
    pub need_restart: Vec<&'static str>,
}

/// A running agent.
pub struct Agent {
    pub metrics: Arc<Metrics>,
    /// The line's catalog: components change it at run time through this handle.
    pub catalogs: Arc<Catalogs>,
    /// Every running component (buses, devices, sinks) with its configuration fingerprint.
    pub components: Vec<ComponentId>,
    /// The configuration running now, without its devices (`Config::without_devices`).
    config: Config,
    sources: Vec<Running>,
    sinks: Vec<Running>,
    buffer: Buffer,
    /// For sources started by a reload; let go at shutdown.
    input: Option<crate::buffer::BufferInput>,
    transforms: transform::Plan,
    /// Stops the metrics endpoint and the memory trimmer.
    http: Trigger,
    grace: Duration,
    _lock: std::fs::File,
}

impl Agent {
    /// Starts every component of `config`. Fails (before polling anything) when a sink cannot
    /// be set up, e.g. its token file is missing.
    pub fn start(config: &Config) -> Result<Agent, String> {
        Self::start_with(config, |_| Vec::new())
    }

    /// As `start`, plus sources built by `extra` (registered in the same catalog): how tests
    /// and embedders add a source kind the configuration file does not name.
    pub fn start_with(
        config: &Config,
        extra: impl FnOnce(&mut Registry) -> Vec<Box<dyn Source>>,
    ) -> Result<Agent, String> {
        let metrics = Arc::new(Metrics::new());
        let grace = config.agent.shutdown_grace;

        // Sinks first, so nothing is polled for a sink that cannot start.
        let built_sinks = build_sinks(config, |_| false)?;
        if config.sinks.is_empty() {
            tracing::warn!(
                "no [sinks] configured: readings are polled and counted but delivered nowhere"
            );
        }
        let lock = lock_data_dir(&config.agent.data_dir)?;
        let buffer_dir = config.agent.data_dir.join("buffer");

        // The catalog: ids of the newest buffered catalog are kept for the same points.
        let previous = Buffer::last_catalog(&buffer_dir);
        let mut registry = Registry::new(
            &config.line.id,
            config.line.site.as_deref().unwrap_or(""),
            tags(&config.line.tags),
            previous.as_ref(),
        );
        drop(previous);
        let mut sources = source::build(config, &mut registry);
        sources.extend(extra(&mut registry));
        let (version, next_ids) = registry.into_version();

        let slots = config
            .sinks
            .iter()
            .map(|s| SinkSlot {
                name: s.name.clone(),
                metrics: metrics.sinks.add(&s.name),
            })
            .collect();
        let (buffer, input) = Buffer::open(
            &buffer_dir,
            &config.buffer,
            &version,
            slots,
            metrics.clone(),
        )?;
        let catalogs = Arc::new(Catalogs::new(
            &version,
            next_ids,
            input.clone(),
            buffer_dir.join("catalogs"),
        ));
        let (http, _) = shutdown::channel();
        let mut agent = Agent {
            metrics,
            catalogs,
            components: Vec::new(),
            config: config.without_devices(),
            sources: Vec::new(),
            sinks: Vec::new(),
            buffer,
            input: Some(input),
            transforms: transform::Plan::new(config),
            http,
            grace,
            _lock: lock,
        };
        for (index, (s, (_, built))) in config.sinks.iter().zip(built_sinks).enumerate() {
            if let Some(built) = built {
                agent.start_sink(s, built, index);
            }
        }

        if let Some(address) = &config.agent.metrics_listen {
            let listener = crate::observe::http::bind(address)?;
            tokio::spawn(crate::observe::http::serve(
                listener,
                agent.metrics.clone(),
                agent.http.subscribe(),
            ));
            tracing::info!(%address, "serving /metrics, /healthz, /readyz");
        }

        for s in sources {
            agent.start_source(s, &version);
        }
        agent.update_components();
        tokio::spawn(crate::observe::memory::run(agent.http.subscribe()));
        Ok(agent)
    }

    fn start_sink(
        &mut self,
        s: &crate::config::SinkConfig,
        built: Box<dyn sink::Start>,
        index: usize,
    ) {
        let (trigger, _) = shutdown::channel();
        let task = built.start(SinkContext {
            settings: SinkLoop {
                batch_size: s.batch_size,
                flush_interval: s.flush_interval,
                grace: self.grace,
            },
            reader: self.buffer.reader(index),
            metrics: self.metrics.sinks.add(&s.name),
            shutdown: trigger.subscribe(),
            beat: self.metrics.liveness.register(&format!("sink {}", s.name)),
        });
        self.sinks.push(Running {
            id: sink_id(s),
            trigger,
            task,
        });
    }

    fn start_source(&mut self, s: Box<dyn Source>, version: &crate::model::catalog::Version) {
        let Some(input) = self.input.clone() else {
            return;
        };
        let (trigger, _) = shutdown::channel();
        let id = s.id().clone();
        let devices = s.devices();
        let task = s.start(SourceContext {
            catalogs: self.catalogs.clone(),
            version: version.clone(),
            metrics: self.metrics.clone(),
            shutdown: trigger.subscribe(),
            data_dir: self.config.agent.data_dir.clone(),
            input,
            transforms: self.transforms.clone(),
        });
        self.sources.push(Running { id, trigger, task });
        self.components.extend(devices);
    }

    /// `components` from what runs now.
    fn update_components(&mut self) {
        let mut devices: Vec<ComponentId> = self
            .components
            .drain(..)
            .filter(|c| c.kind == Kind::Device)
            .collect();
        devices.sort();
        devices.dedup();
        self.components = self.sinks.iter().map(|s| s.id.clone()).collect();
        self.components
            .extend(self.sources.iter().map(|s| s.id.clone()));
        self.components.extend(devices);
    }

    /// Applies a new (validated) configuration: only what changed restarts. A source (a bus
    /// and its devices) or a sink whose configuration is unchanged keeps running untouched,
    /// with its connections and serial ports; a changed one is stopped, then started anew
    /// (a sink keeps its place in the buffer); one that is gone stops; a new one starts (a new
    /// sink name starts at the head of the buffer). Nothing buffered is lost. Fails, changing
    /// nothing, when a new or changed sink cannot be set up (e.g. its token file is missing).
    pub async fn reload(&mut self, new: &Config) -> Result<ReloadReport, String> {
        let mut report = ReloadReport::default();
        let old = &self.config;
        if fingerprint(&old.line) != fingerprint(&new.line) {
            report.need_restart.push("[line]");
        }
        if old.agent.data_dir != new.agent.data_dir
            || old.agent.metrics_listen != new.agent.metrics_listen
            || old.agent.shutdown_grace != new.agent.shutdown_grace
            || old.agent.stuck_after != new.agent.stuck_after
        {
            report.need_restart.push("[agent]");
        }
        if fingerprint(&old.buffer) != fingerprint(&new.buffer) {
            report.need_restart.push("[buffer]");
        }
        // Apply what can be; the rest keeps running as it was started.
        let mut new = new.clone();
        new.line = old.line.clone();
        new.agent.data_dir = old.agent.data_dir.clone();
        new.agent.metrics_listen = old.agent.metrics_listen.clone();
        new.agent.shutdown_grace = old.agent.shutdown_grace;
        new.agent.stuck_after = old.agent.stuck_after;
        new.buffer = old.buffer.clone();

        // Sinks first, fallibly: a sink that cannot start fails the reload before anything changed.
        let keep_sink =
            |s: &crate::config::SinkConfig| self.sinks.iter().any(|r| r.id == sink_id(s));
        let built = build_sinks(&new, keep_sink)?;

        // The catalog: the new configuration's devices, registered over the current version
        // (unchanged points keep their ids), without the devices that are gone.
        let old_devices: Vec<String> = self
            .components
            .iter()
            .filter(|c| c.kind == Kind::Device)
            .map(|c| c.name.clone())
            .collect();
        let (sources, version) = self
            .catalogs
            .rebuild(|registry| {
                let sources = source::build(&new, registry);
                let kept: std::collections::HashSet<String> = sources
                    .iter()
                    .flat_map(|s| s.devices())
                    .map(|d| d.name)
                    .collect();
                for d in old_devices.iter().filter(|d| !kept.contains(*d)) {
                    registry.remove_device(d);
                }
                sources
            })
            .await;

        // Sources: stop the changed and the removed (a serial port must be free before the
        // new bus opens it), then start the changed and the new.
        let new_ids: Vec<ComponentId> = sources.iter().map(|s| s.id().clone()).collect();
        let new_devices: std::collections::HashSet<String> = sources
            .iter()
            .flat_map(|s| s.devices())
            .map(|d| d.name)
            .collect();
        let (keep, stop): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.sources)
            .into_iter()
            .partition(|r| new_ids.contains(&r.id));
        self.sources = keep;
        for r in stop {
            r.trigger.fire();
            // A source ends within a poll or a request timeout (a publish held back by
            // `when_full = "block"` ends with it); one that does not is aborted, so the reload
            // (and a SIGTERM behind it) never waits for ever.
            stop_within(r.task, self.grace, "source", &r.id.name).await;
            if new_ids
                .iter()
                .any(|n| n.kind == r.id.kind && n.name == r.id.name)
            {
                report.restarted.push(r.id);
            } else {
                report.stopped.push(r.id);
            }
        }
        let old_components = std::mem::take(&mut self.components);
        for d in old_components.iter().filter(|c| c.kind == Kind::Device) {
            if !new_devices.contains(&d.name) {
                self.metrics.devices.remove(&d.name);
                report.stopped.push(d.clone());
            }
        }
        self.transforms = transform::Plan::new(&new);
        for s in sources {
            if self.sources.iter().any(|r| &r.id == s.id()) {
                report.unchanged += 1;
                self.components.extend(s.devices());
                continue;
            }
            if !report
                .restarted
                .iter()
                .any(|r| r.kind == s.id().kind && r.name == s.id().name)
            {
                report.started.push(s.id().clone());
            }
            self.start_source(s, &version);
        }
        drop(version);

        // Sinks: stop the changed and the removed, start the changed and the new.
        let (keep, stop): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.sinks)
            .into_iter()
            .partition(|r| new.sinks.iter().any(|s| sink_id(s) == r.id));
        report.unchanged += keep.len();
        self.sinks = keep;
        for r in stop {
            r.trigger.fire();
            // Aborted if it overstays: never two sinks on one cursor.
            stop_within(
                r.task,
                self.grace + Duration::from_secs(2),
                "sink",
                &r.id.name,
            )
            .await;
            if new.sinks.iter().any(|s| s.name == r.id.name) {
                report.restarted.push(r.id);
            } else {
                self.buffer.remove_sink(&r.id.name);
                self.metrics.sinks.remove(&r.id.name);
                report.stopped.push(r.id);
            }
        }
        for (s, (_, started)) in new.sinks.iter().zip(built) {
            let Some(started) = started else { continue };
            let index = self.buffer.add_sink(SinkSlot {
                name: s.name.clone(),
                metrics: self.metrics.sinks.add(&s.name),
            });
            if !report
                .restarted
                .iter()
                .any(|r| r.kind == Kind::Sink && r.name == s.name)
            {
                report.started.push(sink_id(s));
            }
            self.start_sink(s, started, index);
        }
        self.update_components();
        new.devices = Vec::new();
        self.config = new;
        // The old components and catalog are gone: give their memory back.
        let _ = tokio::task::spawn_blocking(crate::observe::memory::trim).await;
        Ok(report)
    }

    /// Stops polling, lets the buffer write everything, lets the sinks deliver what they can
    /// within the grace period, and returns how many buffered bytes stay on disk undelivered.
    pub async fn stop(mut self) -> u64 {
        for s in &self.sources {
            s.trigger.fire();
        }
        self.buffer.stopping();
        for s in std::mem::take(&mut self.sources) {
            let _ = s.task.await;
        }
        // The catalog handle holds an input too: the writer ends when the last one is gone.
        self.catalogs.close().await;
        self.input.take();
        // The pollers held the last handles to the buffer's input: the writer drains and ends.
        let mut buffer = self.buffer;
        let buffer = match tokio::task::spawn_blocking(move || {
            buffer.close_writer();
            buffer
        })
        .await
        {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(error = %e, "buffer writer did not stop cleanly");
                None
            }
        };
        for s in &self.sinks {
            s.trigger.fire();
        }
        let deadline = tokio::time::Instant::now() + self.grace + Duration::from_secs(2);
        for s in self.sinks {
            let _ = tokio::time::timeout_at(deadline, s.task).await;
        }
        self.http.fire();
        // The sinks' last deliveries: save their positions, or the next start re-sends them.
        if let Some(buffer) = buffer {
            let _ = tokio::task::spawn_blocking(move || buffer.persist()).await;
        }
        // Bytes still to deliver: the largest backlog of any sink (the data they share is on disk once).
        self.metrics
            .sinks
            .all()
            .iter()
            .map(|s| s.buffer_bytes.load(std::sync::atomic::Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}

/// Waits up to `limit` for a stopped component's task to end, then aborts it (and waits for
/// the abort): whatever it had not delivered stays buffered.
async fn stop_within(mut task: JoinHandle<()>, limit: Duration, what: &str, name: &str) {
    if tokio::time::timeout(limit, &mut task).await.is_err() {
        tracing::warn!(
            component = name,
            "the {what} did not stop within {limit:?}; aborted (what it had not delivered stays buffered)"
        );
        task.abort();
        let _ = task.await;
    }
}

/// A sink's identity: its configuration and the current content of its secrets (a token
/// file rewritten before a SIGHUP restarts the sink with the new token).
fn sink_id(s: &crate::config::SinkConfig) -> ComponentId {
    ComponentId {
        kind: Kind::Sink,
        name: s.name.clone(),
        fingerprint: fingerprint(&(s, s.secrets_digest())),
    }
}

/// Builds the sinks of `config`, except those `keep` says are running already (`None`).
#[allow(clippy::type_complexity)]
fn build_sinks(
    config: &Config,
    keep: impl Fn(&crate::config::SinkConfig) -> bool,
) -> Result<Vec<(ComponentId, Option<Box<dyn sink::Start>>)>, String> {
    config
        .sinks
        .iter()
        .map(|s| {
            if keep(s) {
                return Ok((sink_id(s), None));
            }
            sink::build(s, &config.agent.data_dir)
                .map(|b| (sink_id(s), Some(b)))
                .map_err(|e| format!("sink {:?}: {e}", s.name))
        })
        .collect()
}

/// Takes the data directory for this process: two agents writing one buffer would corrupt it.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("data_dir {}: {e}", dir.display()))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "data_dir {} is in use by another linetap process",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
