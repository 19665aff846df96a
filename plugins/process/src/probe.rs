//! Readiness and liveness probes.

use crate::config::{Probe, ProbeKind};

/// Runs `probe` once against the program on `port`.
pub async fn check(probe: &Probe, port: u16) -> Result<(), String> {
    match tokio::time::timeout(probe.timeout, attempt(&probe.kind, port)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}", humantime::format_duration(probe.timeout))),
    }
}

async fn attempt(kind: &ProbeKind, port: u16) -> Result<(), String> {
    match kind {
        ProbeKind::Tcp => {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map(drop).map_err(|e| format!("port {port}: {e}"))
        }
        ProbeKind::Http(path) => {
            let status = crate::forward::get_status(port, path).await?;
            if (200..300).contains(&status) { Ok(()) } else { Err(format!("GET {path} answered {status}")) }
        }
        ProbeKind::Exec(cmd) => {
            let status = crate::sys::command(&cmd[0])
                .args(&cmd[1..])
                .env("PORT", port.to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("cannot run `{}`: {e}", cmd[0]))?;
            if status.success() { Ok(()) } else { Err(format!("`{}` failed: {status}", cmd.join(" "))) }
        }
    }
}
