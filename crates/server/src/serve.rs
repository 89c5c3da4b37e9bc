//! Starting and stopping the server: bind, open the deployment, serve the router until asked to
//! stop. `switchboard serve` and the integration tests both start servers through [`start`].

use crate::config::ServeConfig;
use crate::deployment::{Deployment, OpenOptions};
use crate::http::{router, AppState};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use switchboard_ports::{Clock, SandboxProvider};
use tokio::sync::oneshot;

/// A server that is running on `addr`.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub deployment: Arc<Deployment>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// `http://addr`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://addr`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Waits until the server ends (it ends when `stop` is called or on an IO error).
    pub async fn wait(mut self) -> Result<(), String> {
        (&mut self.task)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// A sender that stops the server when fired (for signal handling).
    pub fn take_stop(&mut self) -> Option<oneshot::Sender<()>> {
        self.stop.take()
    }
}

/// The process-wide metrics recorder (installed once; every server in the process shares it).
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "switchboard_http_request_duration_seconds".into(),
                    ),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ],
                )
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process")
        })
        .clone()
}

/// Installs rustls' ring provider once (reqwest and sqlx's TLS need one).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Binds `config.listen`, opens the deployment and serves until stopped.
pub async fn start(
    config: ServeConfig,
    sandboxes: Arc<dyn SandboxProvider>,
    clock: Arc<dyn Clock>,
) -> Result<RunningServer, String> {
    start_with(config, sandboxes, clock, OpenOptions::default()).await
}

/// [`start`] with [`OpenOptions`] for the deployment (tests use them to inject faults).
pub async fn start_with(
    config: ServeConfig,
    sandboxes: Arc<dyn SandboxProvider>,
    clock: Arc<dyn Clock>,
    options: OpenOptions,
) -> Result<RunningServer, String> {
    install_crypto_provider();
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let deployment = Arc::new(
        Deployment::open_with(
            &config,
            config.callback_base(addr),
            sandboxes,
            clock,
            options,
        )
        .await?,
    );
    let state = AppState {
        app: deployment.app.clone(),
        host: deployment.host.clone(),
        deployment: deployment.clone(),
        metrics: metrics_handle(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(state);
    // Frames are small and must go out at once (as the bare relay's do): no Nagle delay.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(RunningServer {
        addr,
        deployment,
        stop: Some(stop),
        task,
    })
}
