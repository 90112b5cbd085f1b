//! `cargo xtask deb`: the Debian package. The release binary (eBPF object
//! inside), then what is generated from it and from deploy/ under
//! target/deb/assets/ (man pages, gzipped; completions; the conffile), then
//! cargo-deb with the assets that failover-agent/Cargo.toml lists.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::run;

/// What the conffile says above the commented-out groups.
const CONFFILE_NOTE: &str = "\
# As installed by the package, the [[group]] tables below are commented out:
# the service does not start (its check-config refuses a file without a
# group) until this host's uplinks are described. Uncomment and edit them,
# check the file, then: systemctl start failover-agent
";

/// The installed configuration: the example with every line from the
/// first `[[group]]` on commented out, and a note saying why.
pub fn conffile(example: &str) -> String {
    let mut out = String::new();
    let mut in_groups = false;
    let mut noted = false;
    for line in example.lines() {
        if !noted && !line.starts_with('#') {
            out.push_str(CONFFILE_NOTE);
            noted = true;
        }
        in_groups |= line.trim_start().starts_with("[[group");
        if in_groups && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            out.push_str("# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// cargo-deb: on PATH, else where `./dev setup` installs it.
fn cargo_deb() -> Result<PathBuf> {
    let bin = crate::ebpf_toolchain::tools_dir().join("bin/cargo-deb");
    if bin.is_file() {
        return Ok(bin);
    }
    if Command::new("cargo-deb").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok("cargo-deb".into());
    }
    bail!("cargo-deb is not installed: ./dev setup installs it (cargo install cargo-deb --locked)")
}

/// Writes target/deb/assets/ from the built binary and deploy/.
fn assets(root: &Path) -> Result<()> {
    let dir = root.join("target/deb/assets");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let agent = root.join("target/release/failover-agent");
    run(Command::new(&agent).arg("generate").arg(&dir).stdout(std::process::Stdio::null()))?;
    let man = dir.join("man");
    for page in std::fs::read_dir(&man).with_context(|| format!("reading {}", man.display()))? {
        // -n: no name or time stamp inside, so the package is reproducible.
        run(Command::new("gzip").arg("-9n").arg(page?.path()))?;
    }
    let example_path = root.join("deploy/failover-agent.example.toml");
    let example =
        std::fs::read_to_string(&example_path).with_context(|| format!("reading {}", example_path.display()))?;
    std::fs::write(dir.join("failover-agent.toml"), conffile(&example)).context("writing the conffile")?;
    Ok(())
}

/// Builds the package; its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let cargo_deb = cargo_deb()?;
    crate::build_release(root)?;
    assets(root)?;
    let out_dir = root.join("target/debian");
    let output = Command::new(&cargo_deb)
        .current_dir(root)
        .args(["deb", "--no-build", "-p", "failover-agent", "--output"])
        .arg(&out_dir)
        .output()
        .with_context(|| format!("running {}", cargo_deb.display()))?;
    if !output.status.success() {
        bail!("cargo-deb failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = stdout.lines().rev().map(str::trim).find(|l| Path::new(l).extension().is_some_and(|e| e == "deb"));
    deb.map(PathBuf::from).with_context(|| format!("cargo-deb named no .deb: {stdout}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conffile_is_the_example_with_its_groups_commented_out() {
        let example = "# head\n\n[agent]\nx = 1\n\n[[group]]\nname = \"a\"  # c\n# note\n[[group.uplink]]\n";
        let c = conffile(example);
        assert_eq!(
            c,
            format!(
                "# head\n{CONFFILE_NOTE}\n[agent]\nx = 1\n\n# [[group]]\n# name = \"a\"  # c\n# note\n# [[group.uplink]]\n"
            )
        );
    }
}
