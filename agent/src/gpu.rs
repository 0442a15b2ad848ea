//! NVIDIA GPU detection: device files first, `nvidia-smi -L` when there are
//! none (e.g. a container that mounts the driver but names devices
//! differently).
//!
//! Detection runs once at start-up; a GPU appearing later needs a restart,
//! which is what a Kubernetes device plugin gives anyway.

use std::path::Path;

/// Number of NVIDIA GPUs visible to this process.
pub fn detect(device_dir: &Path) -> usize {
    let from_devices = count_device_files(device_dir);
    if from_devices > 0 {
        return from_devices;
    }
    count_from_nvidia_smi()
}

/// Counts `nvidia0`, `nvidia1`, ... (not `nvidiactl`, `nvidia-uvm`).
fn count_device_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| is_gpu_device_name(&e.file_name().to_string_lossy()))
        .count()
}

fn is_gpu_device_name(name: &str) -> bool {
    name.strip_prefix("nvidia")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn count_from_nvidia_smi() -> usize {
    match std::process::Command::new("nvidia-smi").arg("-L").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("GPU "))
            .count(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numbered_device_files_count() {
        assert!(is_gpu_device_name("nvidia0"));
        assert!(is_gpu_device_name("nvidia12"));
        assert!(!is_gpu_device_name("nvidiactl"));
        assert!(!is_gpu_device_name("nvidia-uvm"));
        assert!(!is_gpu_device_name("nvidia"));
    }

    #[test]
    fn counts_device_files_in_a_directory() {
        let dir = std::env::temp_dir().join(format!("gpu-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["nvidia0", "nvidia1", "nvidiactl"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(count_device_files(&dir), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
