//! A private, read-only snapshot of the Postgres installation for the test clusters.
//!
//! Why: `cargo pgrx install` (and `cargo pgrx test`) rewrite `pg_kpi.so` in place. Every
//! running server that has it mapped then dies with SIGBUS or SIGSEGV, which would show
//! up as random crashes in whatever test happens to run during a rebuild. The clusters
//! therefore run from a snapshot: the server binaries are copied (Postgres finds its lib
//! and share directories relative to its own executable, so the copy must be real files),
//! pg_kpi's files are copied, and everything else is symlinked to the system install.
//! Snapshots live in `target/e2e-pginstall/<mtime>-<size of pg_kpi.so>/`, so every test
//! process of one build shares one, and a rebuild gets a new one.
//!
//! Disabled with `PG_KPI_E2E_PRIVATE_INSTALL=0`, or by setting `PG_BIN_DIR`.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The system installation's directories, from `pg_config`.
struct Layout {
    bin: PathBuf,
    pkglib: PathBuf,
    share: PathBuf,
}

fn layout(system_bin: &Path) -> Option<Layout> {
    let out = Command::new(system_bin.join("pg_config"))
        .args(["--bindir", "--pkglibdir", "--sharedir"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines().map(PathBuf::from);
    Some(Layout {
        bin: lines.next()?,
        pkglib: lines.next()?,
        share: lines.next()?,
    })
}

/// Identifies one build of the extension: its library's mtime and size.
fn build_key(pkglib: &Path) -> Option<String> {
    let meta = fs::metadata(pkglib.join("pg_kpi.so")).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{mtime}-{}", meta.len()))
}

/// `root` + an absolute path, mirroring it under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn is_ours(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with("pg_kpi")
}

/// Fills `dst` with symlinks to the entries of `src`, except pg_kpi's files (copied)
/// and the subdirectories named in `descend` (mirrored the same way, recursively).
fn mirror(src: &Path, dst: &Path, descend: &[&str]) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        let target = dst.join(&name);
        if descend.iter().any(|d| name == *d) {
            mirror(&entry.path(), &target, &[])?;
        } else if is_ours(&name) {
            fs::copy(entry.path(), &target)?;
        } else {
            symlink(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn copy_dir_files(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), dst.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn build(root: &Path, l: &Layout) -> io::Result<()> {
    copy_dir_files(&l.bin, &under(root, &l.bin))?;
    mirror(&l.pkglib, &under(root, &l.pkglib), &["bitcode"])?;
    mirror(&l.share, &under(root, &l.share), &["extension"])?;
    Ok(())
}

/// Snapshots older than this, other than the current one, are removed.
const KEEP_OLD: Duration = Duration::from_secs(3600);

fn remove_stale(base: &Path, current: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > KEEP_OLD);
        if path != current && old {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// The bin directory of a snapshot of the installation at `system_bin`, or `None` when
/// one cannot be made (then the system installation is used as it is).
pub fn private_bin_dir(system_bin: &Path) -> Option<PathBuf> {
    let l = layout(system_bin)?;
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-pginstall");
    fs::create_dir_all(&base).ok()?;
    // An install may be under way: retry until the library is unchanged across the copy.
    for attempt in 0..10 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
        let key = build_key(&l.pkglib)?;
        let root = base.join(&key);
        if root.join(".complete").exists() {
            remove_stale(&base, &root);
            return Some(under(&root, &l.bin));
        }
        let tmp = base.join(format!("tmp-{}-{attempt}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let built = build(&tmp, &l).is_ok()
            && build_key(&l.pkglib).as_deref() == Some(key.as_str())
            && fs::write(tmp.join(".complete"), b"").is_ok();
        if !built {
            let _ = fs::remove_dir_all(&tmp);
            continue;
        }
        // Another test process may have finished the same snapshot first: use either.
        if fs::rename(&tmp, &root).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        if root.join(".complete").exists() {
            // The servers run as `postgres` when we are root: it must read the snapshot.
            let _ = Command::new("chmod")
                .arg("-R")
                .arg("a+rX")
                .arg(&base)
                .status();
            remove_stale(&base, &root);
            return Some(under(&root, &l.bin));
        }
    }
    None
}

/// A snapshot like [`private_bin_dir`]'s in a directory of its own, whose extension
/// directory a test may add files to (the upgrade tests install frozen releases and
/// made-up versions there without touching the system installation). Removed on drop.
pub struct ScratchInstall {
    root: PathBuf,
    bin: PathBuf,
    extension: PathBuf,
}

impl ScratchInstall {
    /// A new snapshot of the installation at `system_bin` named after `name`.
    pub fn new(system_bin: &Path, name: &str) -> io::Result<ScratchInstall> {
        let l = layout(system_bin)
            .ok_or_else(|| io::Error::other(format!("cannot run {system_bin:?}/pg_config")))?;
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-pginstall-scratch");
        let root = base.join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        build(&root, &l)?;
        // The servers run as `postgres` when we are root: it must read the snapshot.
        let _ = Command::new("chmod").arg("a+rx").arg(&base).status();
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&root)
            .status();
        Ok(ScratchInstall {
            bin: under(&root, &l.bin),
            extension: under(&root, &l.share).join("extension"),
            root,
        })
    }

    /// The server binaries (for [`crate::ClusterOptions::bin_dir`]).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The extension directory the servers read control and script files from.
    pub fn extension_dir(&self) -> &Path {
        &self.extension
    }

    /// Writes `contents` as file `name` of the extension directory, readable by the server.
    pub fn add_extension_file(&self, name: &str, contents: &str) -> io::Result<()> {
        let path = self.extension.join(name);
        fs::write(&path, contents)?;
        let _ = Command::new("chmod").arg("a+r").arg(&path).status();
        Ok(())
    }
}

impl Drop for ScratchInstall {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}
