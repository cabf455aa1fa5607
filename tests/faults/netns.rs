//! A network namespace joined to the host by a veth pair: a worker started inside it reaches
//! the controller on the host side's address until the test cuts the link.

use std::process::Command;

/// One namespace and its link to the host.
pub struct Partition {
    pub ns: String,
    pub host_ip: String,
    ns_if: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

impl Partition {
    /// Creates the namespace, or prints why it cannot and returns None (the test is skipped).
    pub fn create() -> Option<Partition> {
        let n: u8 = rand::random::<u8>() % 200 + 20;
        let ns = format!("loopd-t{n}");
        let (host_if, ns_if) = (format!("lph{n}"), format!("lpn{n}"));
        let host_ip = format!("10.231.{n}.1");
        let _ = ip(&["netns", "del", &ns]);
        if let Err(e) = ip(&["netns", "add", &ns]) {
            eprintln!("SKIPPED: network namespaces are not available on this machine ({e})");
            return None;
        }
        let p = Partition {
            ns: ns.clone(),
            host_ip: host_ip.clone(),
            ns_if: ns_if.clone(),
        };
        let exec = |args: &[&str]| {
            let mut full = vec!["netns", "exec", ns.as_str(), "ip"];
            full.extend_from_slice(args);
            ip(&full)
        };
        let setup = ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])
        .and_then(|_| ip(&["link", "set", &ns_if, "netns", &ns]))
        .and_then(|_| ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]))
        .and_then(|_| ip(&["link", "set", &host_if, "up"]))
        .and_then(|_| exec(&["addr", "add", &format!("10.231.{n}.2/24"), "dev", &ns_if]))
        .and_then(|_| exec(&["link", "set", &ns_if, "up"]))
        .and_then(|_| exec(&["link", "set", "lo", "up"]));
        if let Err(e) = setup {
            eprintln!("SKIPPED: cannot wire a network namespace on this machine ({e})");
            return None;
        }
        Some(p)
    }

    /// Cuts the namespace off (its link goes down: connections fail fast).
    pub fn cut(&self) {
        ip(&[
            "netns",
            "exec",
            &self.ns,
            "ip",
            "link",
            "set",
            &self.ns_if,
            "down",
        ])
        .expect("cut the link");
    }

    /// Restores the link.
    pub fn heal(&self) {
        ip(&[
            "netns",
            "exec",
            &self.ns,
            "ip",
            "link",
            "set",
            &self.ns_if,
            "up",
        ])
        .expect("restore the link");
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it the host end.
        let _ = ip(&["netns", "del", &self.ns]);
    }
}
