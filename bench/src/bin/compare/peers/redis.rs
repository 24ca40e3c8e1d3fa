//! Redis 7 (`redis-server` from `PATH`, started per run): `SET key value NX PX ttl` over one
//! connection, pipelined per batch. In memory only (`--save '' --appendonly no`); RSS is the
//! server's, CPU is the server's plus this client's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idem_bench::{value_for, Key, TTL};

use crate::peer::{BoxError, Engine, Peer};

pub struct Redis;

pub struct RedisEngine {
    connection: parking_lot::Mutex<Connection>,
    server: ServerGuard,
    version: String,
}

struct Connection {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    /// `$<len>\r\n<ttl ms>\r\n`: the last argument of every SET.
    ttl_arg: Vec<u8>,
    out: Vec<u8>,
    line: Vec<u8>,
}

/// Kills the Redis server this run started, however the run ends.
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Peer for Redis {
    type Engine = RedisEngine;

    fn has_disk(&self) -> bool {
        false
    }

    fn open(&self, dir: &Path) -> Result<RedisEngine, BoxError> {
        let Some(program) = which("redis-server") else {
            return Err("redis-server is not on PATH (the harness installs nothing)".into());
        };
        // An unused port: bind port 0, read the port the OS chose, release it for the server.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = ServerGuard(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("redis-server did not accept connections: {e}").into())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_nodelay(true)?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::with_capacity(1 << 16, stream);
        writer.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        let mut pong = String::new();
        reader.read_line(&mut pong)?;
        if pong != "+PONG\r\n" {
            return Err(format!("unexpected PING reply {pong:?}").into());
        }
        writer.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")?;
        let version = read_bulk(&mut reader)?
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        let ttl_ms = TTL.as_millis().to_string();
        Ok(RedisEngine {
            connection: parking_lot::Mutex::new(Connection {
                writer,
                reader,
                ttl_arg: format!("${}\r\n{ttl_ms}\r\n", ttl_ms.len()).into_bytes(),
                out: Vec::new(),
                line: Vec::with_capacity(64),
            }),
            server,
            version,
        })
    }
}

impl Connection {
    /// Sends one pipeline of `SET key value NX PX ttl`, one per key; returns how many keys were
    /// already there (`SET NX` answered nil).
    fn set_nx(&mut self, keys: &[Key]) -> Result<u64, BoxError> {
        self.out.clear();
        for key in keys {
            self.out.extend_from_slice(b"*6\r\n$3\r\nSET\r\n$16\r\n");
            self.out.extend_from_slice(key);
            self.out.extend_from_slice(b"\r\n$16\r\n");
            self.out.extend_from_slice(&value_for(key));
            self.out.extend_from_slice(b"\r\n$2\r\nNX\r\n$2\r\nPX\r\n");
            self.out.extend_from_slice(&self.ttl_arg);
        }
        self.writer.write_all(&self.out)?;
        let mut duplicates = 0;
        for _ in keys {
            self.line.clear();
            self.reader.read_until(b'\n', &mut self.line)?;
            match self.line.as_slice() {
                b"+OK\r\n" => {}
                b"$-1\r\n" | b"_\r\n" => duplicates += 1,
                other => {
                    return Err(
                        format!("unexpected reply {:?}", String::from_utf8_lossy(other)).into(),
                    )
                }
            }
        }
        Ok(duplicates)
    }
}

impl Engine for RedisEngine {
    /// One round trip per key over the shared connection (the rows use pipelines instead).
    fn check_or_insert(&self, key: &Key) -> Result<bool, BoxError> {
        Ok(self.connection.lock().set_nx(std::slice::from_ref(key))? == 1)
    }

    fn check_or_insert_batch(&mut self, keys: &[Key]) -> Result<u64, BoxError> {
        self.connection.get_mut().set_nx(keys)
    }

    fn server_pid(&self) -> Option<u32> {
        Some(self.server.0.id())
    }

    fn close(self, _dir: &Path) -> Result<String, BoxError> {
        drop(self.connection);
        drop(self.server);
        Ok(format!(
            "redis-server {} on 127.0.0.1, --save '' --appendonly no; 1 connection, one pipeline per call; RSS is the server's",
            self.version
        ))
    }
}

/// Finds an executable on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Reads one RESP bulk string reply.
fn read_bulk(reader: &mut BufReader<TcpStream>) -> Result<String, BoxError> {
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let len: usize = header
        .strip_prefix('$')
        .and_then(|h| h.trim().parse().ok())
        .ok_or(format!("unexpected bulk header {header:?}"))?;
    let mut body = vec![0u8; len + 2];
    reader.read_exact(&mut body)?;
    body.truncate(len);
    Ok(String::from_utf8_lossy(&body).into_owned())
}
