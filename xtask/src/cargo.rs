//! Running `cargo` sub-commands: a printed one-line header per step, and errors that name the
//! step that failed.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

/// One `cargo` invocation, shown as the shell command it stands for.
#[derive(Debug, Clone)]
pub struct Cargo {
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    envs: Vec<(&'static str, &'static str)>,
}

impl Cargo {
    /// `cargo <args>`, run in the current directory (the workspace root).
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self {
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            dir: None,
            envs: Vec::new(),
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Runs in `dir` instead of the current directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Sets an environment variable for this invocation only.
    pub fn env(mut self, key: &'static str, value: &'static str) -> Self {
        self.envs.push((key, value));
        self
    }

    fn command(&self) -> Command {
        // `cargo run` tells the program which cargo started it; prefer it over `PATH`.
        let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args(&self.args).envs(self.envs.iter().copied());
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Runs as a step of a task: prints the command as a header, lets its output through, and
    /// fails with an error naming the step if it does not succeed.
    pub fn run(&self) -> Result<()> {
        println!("==> {self}");
        // The child writes to the same terminal: keep the header above its output.
        std::io::stdout().flush().ok();
        let start = Instant::now();
        let status = self
            .command()
            .status()
            .with_context(|| format!("step `{self}`: cannot start cargo"))?;
        if !status.success() {
            bail!("step `{self}` failed ({status})");
        }
        println!("    ok in {:.1} s", start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Runs quietly and returns what it printed on stdout; its stderr is let through.
    pub fn read(&self) -> Result<String> {
        let output = self
            .command()
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("`{self}`: cannot start cargo"))?;
        if !output.status.success() {
            bail!("`{self}` failed ({})", output.status);
        }
        String::from_utf8(output.stdout).with_context(|| format!("`{self}` printed non-UTF-8"))
    }

    /// Whether the command succeeds, all of its output discarded: probes for installed tools.
    pub fn succeeds(&self) -> bool {
        self.command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl fmt::Display for Cargo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.envs {
            write!(f, "{key}={value} ")?;
        }
        f.write_str("cargo")?;
        for arg in &self.args {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        if let Some(dir) = &self.dir {
            write!(f, " (in {})", dir.display())?;
        }
        Ok(())
    }
}
