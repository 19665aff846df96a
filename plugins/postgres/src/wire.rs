//! Just enough of PostgreSQL's wire protocol (version 3.0) for the
//! orchestrator's own use: connect over the server's Unix socket, where it
//! trusts this machine's users it lets reach the socket, and run a simple
//! query. Its readiness probe and the database's creation use it.

use std::path::Path;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

/// The protocol version a startup message asks for: 3.0.
const PROTOCOL: i32 = 196_608;
/// The largest message read: a probe needs a few bytes.
const MAX_MESSAGE: usize = 1024 * 1024;

/// Runs `SELECT 1` as `user` in `database`: the server accepts connections
/// and answers queries.
pub async fn select_one(socket: &Path, user: &str, database: &str) -> Result<(), String> {
    let rows = query(socket, user, database, "SELECT 1").await?;
    if rows == [vec![Some("1".to_owned())]] { Ok(()) } else { Err(format!("SELECT 1 answered {rows:?}")) }
}

/// One row of a result: its columns as text (`None` for NULL).
pub type Row = Vec<Option<String>>;

/// Runs `sql` (one simple query) as `user` in `database`; the rows of its
/// (last) result.
pub async fn query(socket: &Path, user: &str, database: &str, sql: &str) -> Result<Vec<Row>, String> {
    let mut conn = UnixStream::connect(socket).await.map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut startup = Vec::new();
    startup.extend_from_slice(&PROTOCOL.to_be_bytes());
    for (k, v) in [("user", user), ("database", database)] {
        startup.extend_from_slice(k.as_bytes());
        startup.push(0);
        startup.extend_from_slice(v.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut message = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend_from_slice(&startup);
    conn.write_all(&message).await.map_err(|e| e.to_string())?;
    // Until the server is ready for a query.
    loop {
        let (kind, body) = read(&mut conn).await?;
        match kind {
            b'R' if body.get(..4) == Some(&[0, 0, 0, 0]) => {}
            b'R' => return Err("the server asks for a password on its socket".to_owned()),
            b'E' => return Err(error(&body)),
            b'Z' => break,
            _ => {}
        }
    }
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    conn.write_all(&q).await.map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let mut failed = None;
    loop {
        let (kind, body) = read(&mut conn).await?;
        match kind {
            b'T' => rows.clear(),
            b'D' => rows.push(data_row(&body)?),
            b'E' => failed = Some(error(&body)),
            b'Z' => break,
            _ => {}
        }
    }
    let _ = conn.write_all(&[b'X', 0, 0, 0, 4]).await;
    match failed {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

async fn read(conn: &mut UnixStream) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0u8; 5];
    conn.read_exact(&mut head).await.map_err(|e| format!("the server closed the connection: {e}"))?;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let len = usize::try_from(len).ok().and_then(|l| l.checked_sub(4)).filter(|l| *l <= MAX_MESSAGE);
    let len = len.ok_or_else(|| "the server sent a message of a length out of bounds".to_owned())?;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok((head[0], body))
}

/// An `ErrorResponse`'s severity and message.
fn error(body: &[u8]) -> String {
    let mut severity = "ERROR";
    let mut message = "";
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'S', v)) => severity = std::str::from_utf8(v).unwrap_or("ERROR"),
            Some((b'M', v)) => message = std::str::from_utf8(v).unwrap_or(""),
            _ => {}
        }
    }
    format!("{severity}: {message}")
}

fn data_row(body: &[u8]) -> Result<Row, String> {
    let bad = || "a malformed row".to_owned();
    let count = u16::from_be_bytes(body.get(..2).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let mut at = 2;
    let mut row = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = i32::from_be_bytes(body.get(at..at + 4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        at += 4;
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        let value = body.get(at..at + len).ok_or_else(bad)?;
        row.push(Some(String::from_utf8_lossy(value).into_owned()));
        at += len;
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_errors_are_read() {
        // Two columns: "1", NULL.
        let body = [0, 2, 0, 0, 0, 1, b'1', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(data_row(&body).unwrap(), vec![Some("1".to_owned()), None]);
        assert!(data_row(&[0, 1, 0, 0, 0, 9, b'x']).is_err(), "a value past the end");
        let e = b"SFATAL\0C57P03\0Mthe database system is starting up\0\0";
        assert_eq!(error(e), "FATAL: the database system is starting up");
    }
}
