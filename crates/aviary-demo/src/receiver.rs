//! The demo's webhook receiver: a tiny HTTP/1.1 server on loopback that answers 200 to every
//! POST and keeps the JSON bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{setup, DemoError};

/// A webhook receiver on loopback that records every JSON payload it is sent.
pub(crate) struct Receiver {
    /// Where to POST.
    pub(crate) url: String,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on a free loopback port; every payload is appended to `log` (when given) and
    /// echoed to stdout with `echo`.
    pub(crate) fn start(log: Option<PathBuf>, echo: bool) -> Result<Receiver, DemoError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(setup("webhook receiver"))?;
        listener
            .set_nonblocking(true)
            .map_err(setup("webhook receiver"))?;
        let url = format!(
            "http://{}/hook",
            listener.local_addr().map_err(setup("webhook receiver"))?
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(body) = serve_one(conn) {
                            if echo {
                                aviaryctl::runner::console()
                                    .line(&format!("  webhook <- {}", summarize(&body)));
                            }
                            if let Some(p) = &log {
                                if let Ok(mut f) = std::fs::OpenOptions::new()
                                    .create(true)
                                    .append(true)
                                    .open(p)
                                {
                                    let _ = writeln!(f, "{body}");
                                }
                            }
                            if let Ok(mut v) = s.lock() {
                                v.push(body);
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Receiver {
            url,
            seen,
            stop,
            handle: Some(handle),
        })
    }

    /// The payloads received since the last call.
    pub(crate) fn take(&self) -> Vec<String> {
        self.seen
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn summarize(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let event = v["event"].as_str().unwrap_or("?");
    let msg = v["message"]
        .as_str()
        .or_else(|| v["reason"].as_str())
        .unwrap_or("");
    format!("{event}: {msg}")
}

fn serve_one(conn: TcpStream) -> Option<String> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    let mut w = conn;
    let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    String::from_utf8(body).ok()
}
