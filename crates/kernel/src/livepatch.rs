//! The running kernel's livepatch interface: whether a module file may be loaded into this
//! kernel ([`check_loadable`]: a livepatch module, built for this release), loading it
//! (`finit_module`), `/sys/kernel/livepatch/NAME/{enabled,transition}`, tasks'
//! `/proc/PID/task/TID/patch_state`, and unloading (`delete_module`). Every call is one of
//! nix's safe wrappers or a file of sysfs or `/proc`: no `unsafe`, and nothing of ptrace.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::kmod::{DeleteModuleFlags, ModuleInitFlags, delete_module, finit_module};

/// Where livepatch lists patches.
pub const SYSFS: &str = "/sys/kernel/livepatch";

/// Why a livepatch operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LivepatchError {
    /// The kernel refused to load the module.
    #[error("loading {path}: {errno} ({hint})")]
    Load {
        /// The module file.
        path: PathBuf,
        /// The error.
        errno: nix::errno::Errno,
        /// What it usually means.
        hint: &'static str,
    },
    /// A file of the interface could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No such patch is loaded.
    #[error("no live patch named {0} in {SYSFS}")]
    NotLoaded(String),
    /// The kernel refused to unload the module.
    #[error("unloading module {name}: {errno}")]
    Unload {
        /// The module.
        name: String,
        /// The error.
        errno: nix::errno::Errno,
    },
}

/// Why a module file is not a live patch this kernel can load. Each variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotLoadable {
    /// Not a kernel module, or its `.modinfo` cannot be read.
    #[error("{}", module.display())]
    Malformed {
        /// The module file.
        module: PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::Error,
    },
    /// A kernel module, but not a livepatch one.
    #[error("{} is not a livepatch module (no livepatch=Y in its .modinfo)", module.display())]
    NotLivepatch {
        /// The module file.
        module: PathBuf,
    },
    /// A livepatch module for another kernel release (its `vermagic`).
    #[error("{} was built for kernel {built_for} but this kernel is {running}", module.display())]
    OtherKernel {
        /// The module file.
        module: PathBuf,
        /// The release its `vermagic` names.
        built_for: String,
        /// The running kernel's release.
        running: String,
    },
}

/// A module [`check_loadable`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loadable {
    /// Its name (`.modinfo`'s `name`): the patch's name in `/sys/kernel/livepatch`.
    pub name: String,
}

/// Checks a module file's bytes before loading it into the kernel of release `release`
/// ([`kernel_release`]): an ELF kernel module with `livepatch=Y` in its `.modinfo`, and a
/// `vermagic` (when it has one) for that release. `module` only names the file in errors.
pub fn check_loadable(module: &Path, bytes: &[u8], release: &str) -> Result<Loadable, NotLoadable> {
    let info = crate::klp::modinfo(bytes).map_err(|source| NotLoadable::Malformed {
        module: module.to_path_buf(),
        source,
    })?;
    let get = |k: &str| {
        info.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    if get("livepatch").as_deref() != Some("Y") {
        return Err(NotLoadable::NotLivepatch {
            module: module.to_path_buf(),
        });
    }
    if let Some(vermagic) = get("vermagic")
        && !vermagic.starts_with(&format!("{release} "))
    {
        return Err(NotLoadable::OtherKernel {
            module: module.to_path_buf(),
            built_for: vermagic.split(' ').next().unwrap_or("?").to_string(),
            running: release.to_string(),
        });
    }
    Ok(Loadable {
        name: get("name").unwrap_or_default(),
    })
}

/// A patch as `/sys/kernel/livepatch` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// Its name (the module's).
    pub name: String,
    /// Enabled.
    pub enabled: bool,
    /// A transition (patching or unpatching) is in progress.
    pub transition: bool,
    /// The patched functions, `object/function,sympos`.
    pub functions: Vec<String>,
}

/// A task that has not switched to the target patch state yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StalledTask {
    /// Thread id.
    pub tid: i32,
    /// Its process's id.
    pub pid: i32,
    /// Its name (`comm`).
    pub comm: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LivepatchError + '_ {
    move |source| LivepatchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hint(errno: nix::errno::Errno) -> &'static str {
    use nix::errno::Errno;
    match errno {
        Errno::EPERM => {
            "not root, or the kernel is locked down (Secure Boot) and the module is unsigned"
        }
        Errno::EKEYREJECTED | Errno::ENOKEY => {
            "module signatures are enforced and this module is unsigned"
        }
        Errno::EEXIST => "a module of that name is already loaded",
        Errno::ENOEXEC => "not a module for this kernel (wrong version or architecture)",
        Errno::EINVAL => {
            "the kernel rejected the patch (see dmesg: a symbol or function not found, or a version mismatch)"
        }
        Errno::ENOENT => "a symbol the patch needs is missing (see dmesg)",
        Errno::EBUSY => "another live patch transition is in progress",
        _ => "see dmesg",
    }
}

/// Loads a livepatch module; livepatch enables it during the load.
pub fn load(path: &Path) -> Result<(), LivepatchError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    finit_module(&file, c"", ModuleInitFlags::empty()).map_err(|errno| LivepatchError::Load {
        path: path.to_path_buf(),
        errno,
        hint: hint(errno),
    })
}

fn read(path: &Path) -> Result<String, LivepatchError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(io(path))
}

/// The loaded patches.
pub fn list() -> Result<Vec<Patch>, LivepatchError> {
    let root = Path::new(SYSFS);
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut patches = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(patch) = get(&name)? {
            patches.push(patch);
        }
    }
    patches.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(patches)
}

/// One patch, if loaded.
pub fn get(name: &str) -> Result<Option<Patch>, LivepatchError> {
    let dir = Path::new(SYSFS).join(name);
    if !dir.is_dir() {
        return Ok(None);
    }
    let enabled = read(&dir.join("enabled"))? == "1";
    let transition = read(&dir.join("transition"))? == "1";
    let mut functions = Vec::new();
    for object in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
        if !object.path().is_dir() {
            continue;
        }
        let object_name = object.file_name().to_string_lossy().into_owned();
        for func in std::fs::read_dir(object.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if func.path().is_dir() {
                functions.push(format!(
                    "{object_name}/{}",
                    func.file_name().to_string_lossy()
                ));
            }
        }
    }
    functions.sort();
    Ok(Some(Patch {
        name: name.to_string(),
        enabled,
        transition,
        functions,
    }))
}

/// Waits until patch `name`'s transition is over (or, with `gone`, until it has disappeared
/// from sysfs), up to `timeout`. Returns the tasks still in the old state when time ran out
/// (empty: done).
pub fn wait(name: &str, gone: bool, timeout: Duration) -> Result<Vec<StalledTask>, LivepatchError> {
    let dir = Path::new(SYSFS).join(name);
    let deadline = Instant::now() + timeout;
    loop {
        let done = if gone {
            !dir.exists()
        } else {
            match read(&dir.join("transition")) {
                Ok(t) => t == "0",
                Err(_) if !dir.exists() => return Err(LivepatchError::NotLoaded(name.into())),
                Err(e) => return Err(e),
            }
        };
        if done {
            return Ok(Vec::new());
        }
        if Instant::now() >= deadline {
            return Ok(stalled_tasks(if gone { 0 } else { 1 }));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Tasks whose `patch_state` is neither -1 (no transition) nor `target`.
pub fn stalled_tasks(target: i32) -> Vec<StalledTask> {
    let mut stalled = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return stalled;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let state = std::fs::read_to_string(t.path().join("patch_state"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(state) = state
                && state != -1
                && state != target
            {
                let comm = std::fs::read_to_string(t.path().join("comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default();
                stalled.push(StalledTask { tid, pid, comm });
            }
        }
    }
    stalled
}

/// Starts disabling patch `name` (livepatch then unpatches every task).
pub fn disable(name: &str) -> Result<(), LivepatchError> {
    let path = Path::new(SYSFS).join(name).join("enabled");
    if !path.exists() {
        return Err(LivepatchError::NotLoaded(name.into()));
    }
    std::fs::write(&path, "0").map_err(io(&path))
}

/// Unloads module `name`.
pub fn unload(name: &str) -> Result<(), LivepatchError> {
    let c = CString::new(name).map_err(|_| LivepatchError::NotLoaded(name.into()))?;
    delete_module(&c, DeleteModuleFlags::O_NONBLOCK).map_err(|errno| LivepatchError::Unload {
        name: name.to_string(),
        errno,
    })
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relocatable ELF object whose `.modinfo` holds `entries`.
    fn module(entries: &[&str]) -> Vec<u8> {
        use object::write::Object;
        use object::{Architecture, BinaryFormat, Endianness, SectionKind};
        let mut o = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let section = o.add_section(Vec::new(), b".modinfo".to_vec(), SectionKind::ReadOnlyData);
        let mut data = Vec::new();
        for e in entries {
            data.extend_from_slice(e.as_bytes());
            data.push(0);
        }
        o.set_section_data(section, data, 1);
        o.write().unwrap()
    }

    const RELEASE: &str = "6.1.0-53-amd64";

    #[test]
    fn accepts_a_livepatch_module_for_this_release() {
        let ko = module(&[
            "livepatch=Y",
            "name=fix",
            "vermagic=6.1.0-53-amd64 SMP preempt mod_unload modversions ",
        ]);
        let ok = check_loadable(Path::new("fix.ko"), &ko, RELEASE).unwrap();
        assert_eq!(ok.name, "fix");
        // No vermagic: nothing to compare, the kernel itself checks.
        let ko = module(&["livepatch=Y", "name=bare"]);
        assert_eq!(
            check_loadable(Path::new("bare.ko"), &ko, RELEASE)
                .unwrap()
                .name,
            "bare"
        );
    }

    #[test]
    fn refuses_other_modules_naming_the_file() {
        let plain = module(&["name=plain", "vermagic=6.1.0-53-amd64 SMP "]);
        let e = check_loadable(Path::new("plain.ko"), &plain, RELEASE).unwrap_err();
        assert!(matches!(e, NotLoadable::NotLivepatch { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "plain.ko is not a livepatch module (no livepatch=Y in its .modinfo)"
        );
        let other = module(&["livepatch=Y", "name=fix", "vermagic=6.1.0-52-amd64 SMP "]);
        let e = check_loadable(Path::new("fix.ko"), &other, RELEASE).unwrap_err();
        assert_eq!(
            e.to_string(),
            "fix.ko was built for kernel 6.1.0-52-amd64 but this kernel is 6.1.0-53-amd64"
        );
        // A release that is a prefix of the module's is another release.
        let longer = module(&["livepatch=Y", "vermagic=6.1.0-53-amd64-rt SMP "]);
        assert!(matches!(
            check_loadable(Path::new("rt.ko"), &longer, RELEASE),
            Err(NotLoadable::OtherKernel { .. })
        ));
        let e = check_loadable(Path::new("x.ko"), b"not a module", RELEASE).unwrap_err();
        assert!(matches!(e, NotLoadable::Malformed { .. }));
        assert!(
            anyhow_like(&e).starts_with("x.ko: not a kernel module"),
            "{}",
            anyhow_like(&e)
        );
    }

    /// The error and its sources joined by `: `, as the binary prints them.
    fn anyhow_like(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    }

    #[test]
    fn default_target_files_follow_the_release() {
        let t = crate::build::TargetFiles::for_running_kernel(RELEASE);
        assert_eq!(t.headers, Path::new("/lib/modules/6.1.0-53-amd64/build"));
        assert_eq!(t.modules, Path::new("/lib/modules/6.1.0-53-amd64"));
        assert_eq!(t.vmlinux, Path::new("/boot/vmlinuz-6.1.0-53-amd64"));
        assert_eq!(t.symbols, Path::new("/proc/kallsyms"));
    }
}
