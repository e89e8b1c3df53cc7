//! The test harness's virtual machine: a kernel booted in QEMU (TCG) with an initramfs of
//! busybox, hotsplice and the files a test needs, running a shell script as `/init` and
//! powering off. The serial console is the result.
//!
//! Used by the kernel harness (`kernel.rs`); hotsplice itself never boots anything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A file of the initramfs.
#[derive(Debug, Clone)]
pub struct File {
    /// Path in the guest (absolute).
    pub path: String,
    /// Contents.
    pub bytes: Vec<u8>,
    /// Mode bits (e.g. 0o755).
    pub mode: u32,
}

impl File {
    /// A file copied from the host.
    pub fn from_host(guest: &str, host: &Path, mode: u32) -> anyhow::Result<File> {
        Ok(File {
            path: guest.to_string(),
            bytes: std::fs::read(host).with_context(|| host.display().to_string())?,
            mode,
        })
    }
}

fn newc_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let name_bytes = name.as_bytes();
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        0,
        0,
        name_bytes.len() + 1,
        0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name_bytes);
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// An uncompressed `newc` cpio archive of `files`, with their parent directories.
pub fn initramfs(files: &[File]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut p = Path::new(f.path.trim_start_matches('/'));
        while let Some(parent) = p.parent() {
            if parent.as_os_str().is_empty() {
                break;
            }
            dirs.insert(parent.to_string_lossy().into_owned());
            p = parent;
        }
    }
    let mut ino = 1;
    for d in &dirs {
        newc_entry(&mut out, ino, d, 0o040755, &[]);
        ino += 1;
    }
    for f in files {
        newc_entry(
            &mut out,
            ino,
            f.path.trim_start_matches('/'),
            0o100000 | f.mode,
            &f.bytes,
        );
        ino += 1;
    }
    newc_entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// The `/init` that wraps a test script: mounts, runs it, powers off.
pub fn init_script(body: &str) -> String {
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         exec </dev/console >/dev/console 2>&1\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin:/sbin:/usr/bin\n\
         mkdir -p /proc /sys /tmp /run\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         echo HSP-INIT-START $(uname -r)\n\
         {body}\n\
         echo HSP-INIT-DONE\n\
         poweroff -f\n"
    )
}

/// The files hotsplice needs in the guest: the binary and the shared libraries it links.
pub fn hotsplice_files(binary: &Path) -> anyhow::Result<Vec<File>> {
    let mut files = vec![File::from_host("/bin/hotsplice", binary, 0o755)?];
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("ldd {}", binary.display()))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(path) = path {
            let guest = path.to_string_lossy().into_owned();
            let real = path.canonicalize().unwrap_or(path);
            files.push(File::from_host(&guest, &real, 0o755)?);
        }
    }
    Ok(files)
}

/// One boot.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The serial console, `\r` removed.
    pub console: String,
    /// What the second serial port received (`/dev/ttyS1`), if asked for.
    pub second: Option<Vec<u8>>,
    /// Wall time.
    pub seconds: f64,
    /// Whether QEMU had to be killed at the timeout.
    pub timed_out: bool,
}

/// Boots `kernel` with `initrd` (TCG, one CPU, no network) and waits until it powers off.
pub fn boot(
    kernel: &Path,
    initrd: &[u8],
    append: &str,
    work: &Path,
    second_port: bool,
    timeout: Duration,
) -> anyhow::Result<Boot> {
    std::fs::create_dir_all(work).with_context(|| work.display().to_string())?;
    let initrd_path = work.join("initrd.cpio");
    std::fs::write(&initrd_path, initrd).with_context(|| initrd_path.display().to_string())?;
    let second = work.join("ttyS1.out");
    let _ = std::fs::remove_file(&second);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "1024", "-smp", "1", "-nic", "none"])
        .args(["-nographic", "-no-reboot", "-serial", "mon:stdio"]);
    if second_port {
        cmd.arg("-serial").arg(format!("file:{}", second.display()));
    }
    cmd.arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(&initrd_path)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 oops=panic {append}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let mut timed_out = false;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).replace('\r', "");
    let log = work.join("console.log");
    if let Ok(mut f) = std::fs::File::create(&log) {
        let _ = f.write_all(console.as_bytes());
    }
    Ok(Boot {
        console,
        second: second_port.then(|| std::fs::read(&second).unwrap_or_default()),
        seconds: started.elapsed().as_secs_f64(),
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_is_newc_with_parent_directories_and_a_trailer() {
        let cpio = initramfs(&[File {
            path: "/etc/hotsplice/key.pub".into(),
            bytes: b"abc".to_vec(),
            mode: 0o644,
        }]);
        assert!(cpio.len().is_multiple_of(4));
        let text = String::from_utf8_lossy(&cpio);
        // Every header starts with the newc magic: two directories, the file, the trailer.
        assert_eq!(text.matches("070701").count(), 4);
        let etc = text.find("etc\0").unwrap();
        let dir = text.find("etc/hotsplice\0").unwrap();
        let file = text.find("etc/hotsplice/key.pub\0").unwrap();
        assert!(etc < dir && dir < file);
        assert!(text[file..].contains("abc"));
        assert!(text[file..].contains("TRAILER!!!\0"));
        // The file's header: regular file 0644, size 3.
        let header = &text[file - 110..file];
        assert_eq!(&header[14..22], "000081a4");
        assert_eq!(&header[54..62], "00000003");
    }
}
