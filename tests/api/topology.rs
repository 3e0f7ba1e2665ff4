//! Private redis-server processes for the Sentinel and Cluster tests (free ports, their files
//! in a temp dir, all killed on drop), and the watch that no refused token passes meanwhile.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::{tool, TestApp};

/// redis-server processes started by a test.
pub struct Servers {
    server: PathBuf,
    pub dir: PathBuf,
    /// Each process with the arguments it was started with.
    children: Vec<(Vec<String>, Option<Child>)>,
}

impl Servers {
    /// `None` (after a notice) when redis-server is missing outside CI; with `CI=true` a
    /// missing redis-server fails the test.
    pub fn new(kind: &str) -> Option<Servers> {
        let server = tool("redis-server", &[])?;
        let dir =
            std::env::temp_dir().join(format!("usher-{kind}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Some(Servers {
            server,
            dir,
            children: Vec::new(),
        })
    }

    /// Listening on 127.0.0.1 only, nothing written to disk but what `dir` holds.
    pub fn common(&self) -> Vec<String> {
        [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([self.dir.to_string_lossy().into_owned()])
        .collect()
    }

    /// Starts one more; its index.
    pub fn spawn(&mut self, args: &[&str]) -> usize {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let child = start(&self.server, &args);
        self.children.push((args, Some(child)));
        self.children.len() - 1
    }

    /// Kills the `i`th.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].1.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the `i`th again with the same arguments (and the same files in `dir`).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let child = start(&self.server, &self.children[i].0);
        self.children[i].1 = Some(child);
    }
}

fn start(server: &Path, args: &[String]) -> Child {
    Command::new(server)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

impl Drop for Servers {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (bounded) until something listens on `port`.
pub fn wait_for_port(port: u16) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("a private redis-server did not start on {port}");
}

/// Checks on every replica, over and over until `finish`, that tokens once refused are never
/// allowed again.
pub struct Watch {
    /// The tokens to check; add one once its logout has answered.
    pub refused: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    wrong_allows: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<usize>,
}

impl Watch {
    pub fn start(apps: &[&TestApp], refused: Vec<String>) -> Watch {
        let refused = Arc::new(Mutex::new(refused));
        let stop = Arc::new(AtomicBool::new(false));
        let wrong_allows = Arc::new(AtomicUsize::new(0));
        let urls: Vec<String> = apps.iter().map(|a| a.url("/api/v1/users/me")).collect();
        let client = apps[0].client.clone();
        let task = {
            let (stop, wrong_allows, refused) = (
                Arc::clone(&stop),
                Arc::clone(&wrong_allows),
                Arc::clone(&refused),
            );
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let tokens = refused.lock().unwrap().clone();
                    for url in &urls {
                        for token in &tokens {
                            let r = client.get(url).bearer_auth(token).send().await.unwrap();
                            if r.status().is_success() {
                                wrong_allows.fetch_add(1, Ordering::Relaxed);
                            }
                            n += 1;
                        }
                    }
                }
                n
            })
        };
        Watch {
            refused,
            stop,
            wrong_allows,
            task,
        }
    }

    pub fn refuse(&self, token: String) {
        self.refused.lock().unwrap().push(token);
    }

    /// Stops the checks; asserts some ran and none allowed a refused token.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        assert!(self.task.await.unwrap() > 0, "no check ran");
        assert_eq!(
            self.wrong_allows.load(Ordering::Relaxed),
            0,
            "a revoked token was allowed"
        );
    }
}
