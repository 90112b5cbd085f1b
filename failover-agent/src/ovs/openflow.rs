//! A minimal OpenFlow client, kept connected to each bridge's management
//! socket only to know whether ovs-vswitchd is there: the connection ends
//! the moment it exits, and a new one succeeds the moment it is back.
//! It speaks just enough OpenFlow 1.3: `HELLO`, `ECHO_REQUEST` / `ECHO_REPLY`.
//!
//! The connection is framed by [`OpenFlowCodec`], so reading a message is
//! cancel-safe: the echo ticker may win a `select!` while a message is only
//! half received without losing its bytes.

use std::{io, path::PathBuf, time::Duration};

use bytes::BytesMut;
use futures::{SinkExt as _, StreamExt as _};
use tokio::{net::UnixStream, sync::mpsc};
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec};

const OFP_VERSION: u8 = 0x04; // OpenFlow 1.3
const OFPT_HELLO: u8 = 0;
const OFPT_ECHO_REQUEST: u8 = 2;
const OFPT_ECHO_REPLY: u8 = 3;
/// Every OpenFlow message starts with this header: version, type, length, xid.
const HEADER_LEN: usize = 8;
/// The length field is a `u16` and counts the whole message.
const MAX_MESSAGE_LEN: usize = u16::MAX as usize;
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

/// Frames an OpenFlow connection: each frame is one whole message, header
/// included. Decoding is a [`LengthDelimitedCodec`] on the header's length
/// field (2 bytes big-endian at offset 2, counting the whole message), plus a
/// check that the length covers at least the header; encoding writes
/// messages as they are, since they carry their own header.
struct OpenFlowCodec {
    inner: LengthDelimitedCodec,
}

impl OpenFlowCodec {
    fn new() -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_offset(2)
            .length_field_length(2)
            .big_endian()
            // Nothing is skipped, so the frame starts at the message's first
            // byte and the length field (the whole message) is its length.
            .num_skip(0)
            .length_adjustment(0)
            .max_frame_length(MAX_MESSAGE_LEN)
            .new_codec();
        Self { inner }
    }
}

/// The length field of the message at the start of `bytes`, once it is there.
fn length_field(bytes: &[u8]) -> Option<usize> {
    bytes.get(2..4).map(|field| usize::from(u16::from_be_bytes([field[0], field[1]])))
}

impl Decoder for OpenFlowCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        // Nothing is skipped, so until a message is split off whole, the
        // start of `src` is its header, whatever state `inner` is in.
        if let Some(length) = length_field(src)
            && length < HEADER_LEN
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("OpenFlow message length {length} is shorter than its {HEADER_LEN}-byte header"),
            ));
        }
        self.inner.decode(src)
    }
}

impl Encoder<&[u8]> for OpenFlowCodec {
    type Error = io::Error;

    fn encode(&mut self, message: &[u8], dst: &mut BytesMut) -> io::Result<()> {
        if message.len() < HEADER_LEN || message.len() > MAX_MESSAGE_LEN || length_field(message) != Some(message.len())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("OpenFlow message of {} bytes does not match its header's length", message.len()),
            ));
        }
        dst.extend_from_slice(message);
        Ok(())
    }
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
async fn serve(stream: UnixStream) -> io::Result<()> {
    let mut framed = Framed::new(stream, OpenFlowCodec::new());
    framed.send(&header(OFPT_HELLO, 8, 1)[..]).await?;
    let mut xid = 2u32;
    let mut last_heard = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(ECHO_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if last_heard.elapsed() > ECHO_TIMEOUT {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no echo reply"));
                }
                framed.send(&header(OFPT_ECHO_REQUEST, 8, xid)[..]).await?;
                xid = xid.wrapping_add(1);
            }
            // Cancel-safe: a partly received message stays in `framed`'s buffer.
            message = framed.next() => {
                let mut message = match message {
                    Some(message) => message?,
                    None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "switch closed the connection")),
                };
                last_heard = tokio::time::Instant::now();
                if message[1] == OFPT_ECHO_REQUEST {
                    // The same xid and payload back; the length is unchanged.
                    let length = message.len() as u16;
                    let xid_in = u32::from_be_bytes([message[4], message[5], message[6], message[7]]);
                    message[..HEADER_LEN].copy_from_slice(&header(OFPT_ECHO_REPLY, length, xid_in));
                    framed.send(&message[..]).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{UnixListener, unix::OwnedReadHalf},
        time::timeout,
    };

    use super::*;

    /// Every async test gives up after this long.
    const TEST_TIMEOUT: Duration = Duration::from_secs(10);

    /// A temp dir unique to this test and process, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("fa-of-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Reads one whole message as a fake switch would.
    async fn read_message(conn: &mut OwnedReadHalf) -> Vec<u8> {
        let mut message = vec![0u8; HEADER_LEN];
        conn.read_exact(&mut message).await.unwrap();
        let length = length_field(&message).unwrap();
        assert!(length >= HEADER_LEN, "client sent a message of length {length}");
        message.resize(length, 0);
        conn.read_exact(&mut message[HEADER_LEN..]).await.unwrap();
        message
    }

    #[test]
    fn headers_are_big_endian_openflow_13() {
        assert_eq!(header(OFPT_HELLO, 8, 1), [4, 0, 0, 8, 0, 0, 0, 1]);
        assert_eq!(header(OFPT_ECHO_REPLY, 16, 0x0102_0304), [4, 3, 0, 16, 1, 2, 3, 4]);
    }

    #[test]
    fn codec_frames_whole_messages_and_rejects_lengths_below_the_header() {
        let mut codec = OpenFlowCodec::new();
        let mut echo = header(OFPT_ECHO_REQUEST, 12, 7).to_vec();
        echo.extend_from_slice(b"ping");
        let hello = header(OFPT_HELLO, 8, 8);
        // A message arriving a byte at a time, then one whole, is framed whole.
        let mut src = BytesMut::new();
        for &byte in &echo[..echo.len() - 1] {
            src.extend_from_slice(&[byte]);
            assert_eq!(codec.decode(&mut src).unwrap(), None);
        }
        src.extend_from_slice(&echo[echo.len() - 1..]);
        src.extend_from_slice(&hello);
        assert_eq!(codec.decode(&mut src).unwrap().as_deref(), Some(&echo[..]));
        assert_eq!(codec.decode(&mut src).unwrap().as_deref(), Some(&hello[..]));
        assert_eq!(codec.decode(&mut src).unwrap(), None);
        // Encoding writes a message as it is, and refuses one its header belies.
        let mut dst = BytesMut::new();
        codec.encode(&echo[..], &mut dst).unwrap();
        assert_eq!(&dst[..], &echo[..]);
        assert!(codec.encode(&echo[..8], &mut dst).is_err());
        for length in [0, 3, 4, 7] {
            let mut src = BytesMut::from(&header(OFPT_ECHO_REQUEST, length, 1)[..]);
            let err = OpenFlowCodec::new().decode(&mut src).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "length {length}");
            assert!(err.to_string().contains("shorter than its 8-byte header"), "{err}");
        }
    }

    #[tokio::test]
    async fn reports_down_when_nothing_listens_and_up_when_something_does() {
        let dir = TempDir::new("up-down");
        let socket = dir.0.join("br0.mgmt");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(monitor("br0".into(), socket.clone(), tx));
        timeout(TEST_TIMEOUT, async {
            assert_eq!(rx.recv().await, Some(Reachability { bridge: "br0".into(), up: false }));
            // A fake switch: accepts, answers the hello, then hangs up.
            let listener = UnixListener::bind(&socket).unwrap();
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 8];
            conn.read_exact(&mut hello).await.unwrap();
            assert_eq!(hello[1], OFPT_HELLO);
            assert_eq!(rx.recv().await, Some(Reachability { bridge: "br0".into(), up: true }));
            drop(conn);
            drop(listener);
            std::fs::remove_file(&socket).unwrap();
            assert_eq!(rx.recv().await, Some(Reachability { bridge: "br0".into(), up: false }));
        })
        .await
        .expect("test timed out");
        task.abort();
    }

    #[tokio::test]
    async fn answers_an_echo_request_that_arrives_in_pieces_slower_than_the_ticker() {
        let dir = TempDir::new("split-echo");
        let socket = dir.0.join("br0.mgmt");
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(monitor("br0".into(), socket.clone(), tx));
        timeout(TEST_TIMEOUT, async {
            let (conn, _) = listener.accept().await.unwrap();
            let (mut reader, mut writer) = conn.into_split();
            assert_eq!(read_message(&mut reader).await[1], OFPT_HELLO);
            assert_eq!(rx.recv().await, Some(Reachability { bridge: "br0".into(), up: true }));
            // An echo request in three pieces, split inside the header and
            // inside the payload, each pause longer than ECHO_INTERVAL so the
            // client's ticker fires while a message is half received.
            let payload = b"split across ticks";
            let mut request = header(OFPT_ECHO_REQUEST, (HEADER_LEN + payload.len()) as u16, 0xdead_beef).to_vec();
            request.extend_from_slice(payload);
            let pause = ECHO_INTERVAL + Duration::from_millis(100);
            for piece in [&request[..3], &request[3..12], &request[12..]] {
                writer.write_all(piece).await.unwrap();
                tokio::time::sleep(pause).await;
            }
            // The client's own echo requests come meanwhile; then the reply.
            let reply = loop {
                let message = read_message(&mut reader).await;
                match message[1] {
                    OFPT_ECHO_REQUEST => assert_eq!(message.len(), HEADER_LEN),
                    OFPT_ECHO_REPLY => break message,
                    other => panic!("unexpected message type {other}: {message:?}"),
                }
            };
            let mut expected = header(OFPT_ECHO_REPLY, request.len() as u16, 0xdead_beef).to_vec();
            expected.extend_from_slice(payload);
            assert_eq!(reply, expected);
            // Still in sync and connected: it goes on asking, with new xids,
            // and takes our answers.
            let mut xids = Vec::new();
            while xids.len() < 2 {
                let message = read_message(&mut reader).await;
                assert_eq!(message[1], OFPT_ECHO_REQUEST, "{message:?}");
                let xid = u32::from_be_bytes([message[4], message[5], message[6], message[7]]);
                writer.write_all(&header(OFPT_ECHO_REPLY, 8, xid)).await.unwrap();
                xids.push(xid);
            }
            assert!(xids[0] < xids[1], "{xids:?}");
            assert!(rx.try_recv().is_err(), "reachability changed while connected");
        })
        .await
        .expect("test timed out");
        task.abort();
    }

    #[tokio::test]
    async fn a_message_shorter_than_its_header_ends_the_connection() {
        let dir = TempDir::new("short");
        let socket = dir.0.join("br0.mgmt");
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(monitor("br0".into(), socket.clone(), tx));
        timeout(TEST_TIMEOUT, async {
            for length in [0u16, 4, 7] {
                let (conn, _) = listener.accept().await.unwrap();
                let (mut reader, mut writer) = conn.into_split();
                assert_eq!(read_message(&mut reader).await[1], OFPT_HELLO);
                assert_eq!(rx.recv().await, Some(Reachability { bridge: "br0".into(), up: true }));
                writer.write_all(&header(OFPT_ECHO_REQUEST, length, 9)).await.unwrap();
                // Down well before ECHO_TIMEOUT could be the reason, while
                // this end still holds the connection open.
                let down = timeout(ECHO_TIMEOUT / 2, rx.recv()).await;
                assert_eq!(down, Ok(Some(Reachability { bridge: "br0".into(), up: false })), "length {length}");
                // The client hung up: after its hello and echo requests, end of stream.
                let mut rest = Vec::new();
                reader.read_to_end(&mut rest).await.unwrap();
                assert_eq!(rest.len() % HEADER_LEN, 0, "length {length}: {rest:?}");
                drop(writer);
            }
        })
        .await
        .expect("test timed out");
        task.abort();
    }
}
