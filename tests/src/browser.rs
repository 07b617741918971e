//! A real headless Chromium, driven through `tests/web/driver.mjs` (puppeteer-core):
//! one JSON command a line on its stdin, one JSON answer a line on its stdout.
//!
//! The driver's packages are installed on first use from `tests/web/package-lock.json`
//! ([`install_driver`]). Where no browser is installed (`/usr/bin/chromium`, or
//! `TSN_CHROMIUM`; `.ci/run` installs Debian's) or npm cannot install the packages,
//! [`Browser::start`] says SKIPPED on stderr and returns `None`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// The folder of the page's test tools (`tests/web`).
pub fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// The browser the driver starts.
pub fn chromium() -> PathBuf {
    std::env::var_os("TSN_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Whether `node` runs here.
pub fn have_node() -> bool {
    Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the driver's packages from `tests/web/package-lock.json` (`npm ci`) unless
/// they are there; once per test process.
pub fn install_driver() -> Result<()> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if web_dir()
        .join("node_modules/puppeteer-core/package.json")
        .exists()
    {
        return Ok(());
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(web_dir())
        .output()
        .context("running npm ci in tests/web")?;
    if !out.status.success() {
        bail!(
            "npm ci in tests/web failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Says loudly that a test did not run, and why.
pub fn skipped(test: &str, why: &str) {
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
}

/// A running headless Chromium and its driver.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    log: PathBuf,
}

impl Browser {
    /// Starts the driver (and the browser), its stderr (the page's console too) in `log`.
    /// `None` (after saying SKIPPED) where there is no browser or no driver packages.
    pub fn start(test: &str, log: &Path) -> Result<Option<Browser>> {
        if !have_node() {
            skipped(test, "node is not installed");
            return Ok(None);
        }
        if !chromium().exists() {
            skipped(
                test,
                &format!(
                    "no browser at {} (apt-get install chromium)",
                    chromium().display()
                ),
            );
            return Ok(None);
        }
        if let Err(e) = install_driver() {
            skipped(
                test,
                &format!("puppeteer-core could not be installed: {e:#}"),
            );
            return Ok(None);
        }
        let err = std::fs::File::create(log)?;
        let mut child = Command::new("node")
            .arg(web_dir().join("driver.mjs"))
            .env("TSN_CHROMIUM", chromium())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .context("starting node tests/web/driver.mjs")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        Ok(Some(Browser {
            child,
            stdin,
            stdout,
            log: log.to_path_buf(),
        }))
    }

    /// Sends one command and returns its answer; an answer with `ok: false` is an error.
    pub fn cmd(&mut self, cmd: Value) -> Result<Value> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("driver stopped"))?;
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!(
                "the browser driver ended; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let answer: Value =
            serde_json::from_str(&line).with_context(|| format!("the driver answered {line:?}"))?;
        if answer["ok"] != json!(true) {
            bail!(
                "browser: {cmd} failed: {}\nthe driver's log:\n{}",
                answer["error"],
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(answer)
    }

    /// Opens `url`.
    pub fn goto(&mut self, url: &str) -> Result<()> {
        self.cmd(json!({"op": "goto", "url": url})).map(drop)
    }

    /// Types `text` into the element `testid` (cleared first).
    pub fn type_in(&mut self, testid: &str, text: &str) -> Result<()> {
        self.cmd(json!({"op": "type", "testid": testid, "text": text}))
            .map(drop)
    }

    /// Presses `key` in the element `testid`.
    pub fn press(&mut self, testid: &str, key: &str) -> Result<()> {
        self.cmd(json!({"op": "press", "testid": testid, "key": key}))
            .map(drop)
    }

    /// Clicks the element `testid`.
    pub fn click(&mut self, testid: &str) -> Result<()> {
        self.cmd(json!({"op": "click", "testid": testid})).map(drop)
    }

    /// Chooses the file `path` in the file input `testid`.
    pub fn upload(&mut self, testid: &str, path: &Path) -> Result<()> {
        self.cmd(json!({"op": "upload", "testid": testid, "path": path}))
            .map(drop)
    }

    /// The text of the element `testid`.
    pub fn text(&mut self, testid: &str) -> Result<String> {
        let a = self.cmd(json!({"op": "text", "testid": testid}))?;
        Ok(a["text"].as_str().unwrap_or_default().to_string())
    }

    /// The texts of the children of the element `testid`, in order.
    pub fn children(&mut self, testid: &str) -> Result<Vec<String>> {
        let a = self.cmd(json!({"op": "children", "testid": testid}))?;
        Ok(a["texts"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|t| t.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until the text of `testid` contains `part`.
    pub fn wait_text(&mut self, testid: &str, part: &str, timeout: Duration) -> Result<()> {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.cmd(json!({"op": "wait_text", "testid": testid, "contains": part, "timeout_ms": ms}))
            .map(drop)
    }

    /// Evaluates `js` in the page; its result as JSON.
    pub fn eval(&mut self, js: &str) -> Result<Value> {
        Ok(self.cmd(json!({"op": "eval", "js": js}))?["value"].clone())
    }

    /// How many alert, confirm or prompt dialogs the page opened.
    pub fn dialogs(&mut self) -> Result<u64> {
        let a = self.cmd(json!({"op": "dialogs"}))?;
        Ok(a["count"]
            .as_u64()
            .or_else(|| a["value"].as_u64())
            .unwrap_or(0))
    }

    /// A PNG of the page at `width` x `height`.
    pub fn screenshot(&mut self, path: &Path, width: u32, height: u32) -> Result<()> {
        self.cmd(json!({"op": "screenshot", "path": path, "width": width, "height": height}))
            .map(drop)
    }

    /// The driver's log (its stderr and the page's console).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{}", json!({"op": "quit"}));
        }
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
