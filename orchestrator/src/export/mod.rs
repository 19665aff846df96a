//! Turning a topology into what another platform runs (decision 0011).

pub mod kubernetes;

use std::io::Write as _;
use std::path::Path;

/// The file the translation report is written to, beside the manifests.
pub const REPORT_FILE: &str = "translation-report.txt";
/// Bytes of randomness in a generated token (written as hex).
const TOKEN_BYTES: usize = 32;

/// Writes `export` into directory `dir`: each manifest, `kustomization.yaml`
/// and the report; tokens under `secrets/` are generated when missing and
/// kept when present (a re-export does not rotate them). Returns how many
/// files were written.
pub fn write_dir(dir: &Path, export: &kubernetes::Export) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut written = 0;
    for m in &export.manifests {
        write_atomically(&dir.join(&m.file), kubernetes::to_yaml(&m.resource).as_bytes(), 0o644)?;
        written += 1;
    }
    write_atomically(&dir.join("kustomization.yaml"), kubernetes::to_yaml(&export.kustomization).as_bytes(), 0o644)?;
    let report: String = export.report.iter().map(|n| format!("{n}\n")).collect();
    write_atomically(&dir.join(REPORT_FILE), report.as_bytes(), 0o644)?;
    written += 2;
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    set_mode(&secrets, 0o700)?;
    write_atomically(&secrets.join(".gitignore"), b"# Tokens: never commit them.\n*\n", 0o644)?;
    // The `env` values read from files: rewritten at each export from the
    // files the topology names (those are what the user keeps).
    if let Some(env) = &export.env_secret {
        let dir = secrets.join("env");
        std::fs::create_dir_all(&dir)?;
        set_mode(&dir, 0o700)?;
        for (key, (_, value)) in &env.keys {
            write_atomically(&dir.join(key), format!("{value}\n").as_bytes(), 0o600)?;
            written += 1;
        }
    }
    for name in [kubernetes::PEER_TOKEN, kubernetes::ADMIN_TOKEN] {
        let path = secrets.join(name);
        if !path.exists() {
            write_atomically(&path, format!("{}\n", token()?).as_bytes(), 0o600)?;
            written += 1;
        }
    }
    Ok(written)
}

/// A new random token, as hex.
fn token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// `bytes` into `path` through a temporary file renamed over it: a reader
/// sees the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp-export");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
