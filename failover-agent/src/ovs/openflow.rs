//! A minimal OpenFlow client, kept connected to each bridge's management
//! socket only to know whether ovs-vswitchd is there: the connection ends
//! the moment it exits, and a new one succeeds the moment it is back.
//! It speaks just enough OpenFlow 1.3: `HELLO`, `ECHO_REQUEST` / `ECHO_REPLY`.

use std::{path::PathBuf, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
    sync::mpsc,
};

const OFP_VERSION: u8 = 0x04; // OpenFlow 1.3
const OFPT_HELLO: u8 = 0;
const OFPT_ECHO_REQUEST: u8 = 2;
const OFPT_ECHO_REPLY: u8 = 3;
/// How often the connection is checked with an echo.
pub const ECHO_INTERVAL: Duration = Duration::from_millis(500);
/// No answer for this long: the switch is hung.
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry delays while the switch is away: first, and at most.
pub const RETRY_MIN: Duration = Duration::from_millis(50);
pub const RETRY_MAX: Duration = Duration::from_millis(500);

/// A bridge's reachability changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reachability {
    pub bridge: String,
    pub up: bool,
}

/// An OpenFlow message header.
pub fn header(kind: u8, length: u16, xid: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = OFP_VERSION;
    h[1] = kind;
    h[2..4].copy_from_slice(&length.to_be_bytes());
    h[4..8].copy_from_slice(&xid.to_be_bytes());
    h
}

/// Keeps a connection to `socket` (the bridge's `.mgmt` socket) and reports
/// each change of reachability on `tx`, the first one too. Runs until `tx` closes.
pub async fn monitor(bridge: String, socket: PathBuf, tx: mpsc::UnboundedSender<Reachability>) {
    let mut reported: Option<bool> = None;
    let mut retry = RETRY_MIN;
    loop {
        let up = match UnixStream::connect(&socket).await {
            Ok(stream) => {
                retry = RETRY_MIN;
                if reported != Some(true) {
                    reported = Some(true);
                    if tx.send(Reachability { bridge: bridge.clone(), up: true }).is_err() {
                        return;
                    }
                }
                // Serve the connection until it ends; then it is down.
                let _ = serve(stream).await;
                false
            }
            Err(_) => false,
        };
        if !up && reported != Some(false) {
            reported = Some(false);
            if tx.send(Reachability { bridge: bridge.clone(), up: false }).is_err() {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// Runs one connection: HELLO, then echoes both ways, until it fails.
async fn serve(mut stream: UnixStream) -> std::io::Result<()> {
    stream.write_all(&header(OFPT_HELLO, 8, 1)).await?;
    let mut xid = 2u32;
    let mut last_heard = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(ECHO_INTERVAL);
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if last_heard.elapsed() > ECHO_TIMEOUT {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo reply"));
                }
                stream.write_all(&header(OFPT_ECHO_REQUEST, 8, xid)).await?;
                xid = xid.wrapping_add(1);
            }
            read = stream.read_exact(&mut buf[..8]) => {
                read?;
                last_heard = tokio::time::Instant::now();
                let kind = buf[1];
                let length = usize::from(u16::from_be_bytes([buf[2], buf[3]])).clamp(8, buf.len());
                let xid_in = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                stream.read_exact(&mut buf[8..length]).await?;
                if kind == OFPT_ECHO_REQUEST {
                    let mut reply = buf[..length].to_vec();
                    reply[..8].copy_from_slice(&header(OFPT_ECHO_REPLY, length as u16, xid_in));
                    stream.write_all(&reply).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_big_endian_openflow_13() {
        assert_eq!(header(OFPT_HELLO, 8, 1), [4, 0, 0, 8, 0, 0, 0, 1]);
        assert_eq!(header(OFPT_ECHO_REPLY, 16, 0x0102_0304), [4, 3, 0, 16, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn reports_down_when_nothing_listens_and_up_when_something_does() {
        let dir = std::env::temp_dir().join(format!("fa-of-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("br0.mgmt");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(monitor("br0".into(), socket.clone(), tx));
        assert_eq!(rx.recv().await, Some(Reachability { bridge: "br0".into(), up: false }));
        // A fake switch: accepts, answers the hello, then hangs up.
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut hello = [0u8; 8];
        conn.read_exact(&mut hello).await.unwrap();
        assert_eq!(hello[1], OFPT_HELLO);
        assert_eq!(rx.recv().await, Some(Reachability { bridge: "br0".into(), up: true }));
        drop(conn);
        drop(listener);
        std::fs::remove_file(&socket).unwrap();
        assert_eq!(rx.recv().await, Some(Reachability { bridge: "br0".into(), up: false }));
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
