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

/// A running agent.
pub struct Agent {
    pub metrics: Arc<Metrics>,
    /// The line's catalog: components change it at run time through this handle.
    pub catalogs: Arc<Catalogs>,
    /// Every running component (buses, devices, sinks) with its configuration fingerprint.
    pub components: Vec<ComponentId>,
    trigger: Trigger,
    /// Stops the sinks, after the pollers have stopped and the buffer has written everything.
    sink_trigger: Trigger,
    pollers: Vec<JoinHandle<()>>,
    sinks: Vec<JoinHandle<()>>,
    buffer: Buffer,
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
        let (trigger, _) = shutdown::channel();
        let grace = config.agent.shutdown_grace;

        // Sinks first, so nothing is polled for a sink that cannot start.
        let mut built_sinks = Vec::new();
        let mut components = Vec::new();
        for s in &config.sinks {
            built_sinks.push(
                sink::build(s, &config.agent.data_dir)
                    .map_err(|e| format!("sink {:?}: {e}", s.name))?,
            );
            components.push(ComponentId {
                kind: Kind::Sink,
                name: s.name.clone(),
                fingerprint: fingerprint(s),
            });
        }
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
        for s in &sources {
            components.push(s.id().clone());
            components.extend(s.devices());
        }
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
        let (sink_trigger, _) = shutdown::channel();
        let mut sinks = Vec::new();
        for (index, (s, built)) in config.sinks.iter().zip(built_sinks).enumerate() {
            sinks.push(built.start(SinkContext {
                settings: SinkLoop {
                    batch_size: s.batch_size,
                    flush_interval: s.flush_interval,
                    grace,
                },
                reader: buffer.reader(index),
                metrics: metrics.sinks.add(&s.name),
                shutdown: sink_trigger.subscribe(),
                beat: metrics.liveness.register(&format!("sink {}", s.name)),
            }));
        }

        if let Some(address) = &config.agent.metrics_listen {
            let listener = crate::observe::http::bind(address)?;
            tokio::spawn(crate::observe::http::serve(
                listener,
                metrics.clone(),
                trigger.subscribe(),
            ));
            tracing::info!(%address, "serving /metrics, /healthz, /readyz");
        }

        let transforms = transform::Plan;
        let mut pollers = Vec::new();
        for s in sources {
            pollers.push(s.start(SourceContext {
                catalogs: catalogs.clone(),
                version: version.clone(),
                metrics: metrics.clone(),
                shutdown: trigger.subscribe(),
                input: input.clone(),
                transforms: transforms.clone(),
            }));
        }
        drop(version);
        drop(input);
        Ok(Agent {
            metrics,
            catalogs,
            components,
            trigger,
            sink_trigger,
            pollers,
            sinks,
            buffer,
            grace,
            _lock: lock,
        })
    }

    /// Stops polling, lets the buffer write everything, lets the sinks deliver what they can
    /// within the grace period, and returns how many buffered bytes stay on disk undelivered.
    pub async fn stop(self) -> u64 {
        self.trigger.fire();
        self.buffer.stopping();
        for p in self.pollers {
            let _ = p.await;
        }
        // The catalog handle holds an input too: the writer ends when the last one is gone.
        self.catalogs.close().await;
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
        self.sink_trigger.fire();
        let deadline = tokio::time::Instant::now() + self.grace + Duration::from_secs(2);
        for s in self.sinks {
            let _ = tokio::time::timeout_at(deadline, s).await;
        }
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
