//! Test hosts made of network namespaces that a test creates (root only): each host a
//! namespace with an address on a bridge in a "switch" namespace; links between two
//! hosts are cut with blackhole routes (this kernel has no queueing disciplines to
//! filter with). The addresses (10.213.0.0/24) exist only inside these namespaces.

use std::process::Command;

use anyhow::{bail, Context, Result};

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Test hosts: namespace `h<i>` with address 10.213.0.<i+1> on a shared bridge.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    hosts: usize,
}

impl Net {
    /// Creates `hosts` hosts joined by a switch.
    pub fn create(hosts: usize) -> Result<Net> {
        // Tests of one process run at once: each gets namespaces of its own.
        static NETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("tsnp{}n{n}", std::process::id());
        let net = Net { prefix, hosts: 0 };
        let sw = net.switch();
        // One left by an earlier run whose process had the same id.
        let _ = ip(&["netns", "del", &sw]);
        ip(&["netns", "add", &sw])?;
        let mut net = net;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let h = net.host(i);
            let _ = ip(&["netns", "del", &h]);
            ip(&["netns", "add", &h])?;
            net.hosts = i + 1;
            let v = format!("v{i}");
            ip(&[
                "link", "add", &v, "netns", &sw, "type", "veth", "peer", "name", "eth0", "netns",
                &h,
            ])?;
            ip(&["-n", &sw, "link", "set", &v, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &h,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &h, "link", "set", "eth0", "up"])?;
            ip(&["-n", &h, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// The switch namespace.
    pub fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// The namespace of host `i`.
    pub fn host(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    /// The address of host `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("10.213.0.{}", i + 1)
    }

    /// The command prefix that runs a program on host `i`.
    pub fn exec(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.host(i)]
    }

    /// Drops all traffic between hosts `a` and `b`, both ways: each gets a blackhole
    /// route to the other (this kernel has no queueing disciplines to filter with).
    pub fn cut(&self, a: usize, b: usize) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            ip(&[
                "-n",
                &self.host(from),
                "route",
                "add",
                "blackhole",
                &format!("{}/32", self.addr(to)),
            ])?;
        }
        Ok(())
    }

    /// Restores the link between hosts `a` and `b`.
    pub fn heal(&self, a: usize, b: usize) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            ip(&[
                "-n",
                &self.host(from),
                "route",
                "del",
                "blackhole",
                &format!("{}/32", self.addr(to)),
            ])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.host(i)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}
