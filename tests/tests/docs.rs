//! The docs cannot drift from what ships (not privileged, fast):
//! - docs/configuration.md's key tables, the parser and
//!   deploy/failover-agent.example.toml name the same keys, and the example
//!   passes `check-config`;
//! - every shell command in a fenced `sh`, `bash` or `console` block of
//!   README.md or docs/*.md is run, by this test or by one that carries its
//!   exact text (under tests/, in xtask/src or in ./dev);
//! - every relative link between them reaches its file and #anchor.
//!
//! docs/development.md ("Commands in the docs") says how to satisfy it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
    process::Command,
};

use failover_tests::{agent_lab::agent_binary, have};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace above tests/").to_path_buf()
}

/// A Markdown file, named relative to the repository root.
struct Doc {
    name: String,
    text: String,
}

fn docs() -> Vec<Doc> {
    let root = root();
    let mut names = vec!["README.md".to_string()];
    let mut more: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("a docs/ entry").file_name().to_string_lossy().into_owned())
        .filter(|n| Path::new(n).extension().is_some_and(|e| e == "md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    more.sort();
    names.extend(more);
    names
        .into_iter()
        .map(|name| Doc { text: std::fs::read_to_string(root.join(&name)).expect("reading a doc"), name })
        .collect()
}

/// A fenced code block: its info string and its lines (1-based numbers).
struct Block {
    lang: String,
    lines: Vec<(usize, String)>,
}

/// The fenced blocks of `text`, and its other lines (prose, headings).
fn split(text: &str) -> (Vec<Block>, Vec<(usize, String)>) {
    let (mut blocks, mut prose) = (Vec::new(), Vec::new());
    let mut open: Option<(String, Block)> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.trim_start();
        let fence: String = t.chars().take_while(|&c| c == '`' || c == '~').collect();
        match open.take() {
            Some((f, block))
                if fence.len() >= f.len() && fence.starts_with(&f[..1]) && t[fence.len()..].trim().is_empty() =>
            {
                blocks.push(block);
            }
            Some((f, mut block)) => {
                block.lines.push((n, line.to_string()));
                open = Some((f, block));
            }
            None if fence.len() >= 3 => {
                let lang = t[fence.len()..].split_whitespace().next().unwrap_or("").to_string();
                open = Some((fence, Block { lang, lines: Vec::new() }));
            }
            None => prose.push((n, line.to_string())),
        }
    }
    if let Some((_, block)) = open {
        blocks.push(block);
    }
    (blocks, prose)
}

// ---------------------------------------------------------------------------
// Commands

const SHELL_LANGS: &[&str] = &["sh", "bash", "console", "shell"];

/// A command shown in a doc.
#[derive(Debug)]
struct Shown {
    at: String,
    command: String,
}

/// `line` without a trailing `# comment` (a `#` at the start or after
/// whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut quote, mut prev_space) = (None, true);
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The commands of a doc's shell blocks: in `console` ones only `$ ` lines
/// (the rest is output); `\` continues a line.
fn commands(doc: &Doc) -> Vec<Shown> {
    let mut out = Vec::new();
    for block in split(&doc.text).0.into_iter().filter(|b| SHELL_LANGS.contains(&b.lang.as_str())) {
        let console = block.lang == "console";
        let mut pending: Option<(usize, String)> = None;
        for (n, line) in &block.lines {
            let text = match (&pending, console) {
                (Some(_), _) | (None, false) => line.as_str(),
                (None, true) => match line.strip_prefix("$ ").or_else(|| line.strip_prefix("# ")) {
                    Some(rest) => rest,
                    None => continue,
                },
            };
            let text = strip_comment(text).trim_end();
            let (start, mut joined) = pending.take().unwrap_or((*n, String::new()));
            if let Some(head) = text.strip_suffix('\\') {
                joined.push_str(head);
                joined.push(' ');
                pending = Some((start, joined));
                continue;
            }
            joined.push_str(text);
            let command = normalise(&joined);
            if !command.is_empty() {
                out.push(Shown { at: format!("{}:{start}", doc.name), command });
            }
        }
    }
    out
}

/// Commands this test runs itself, from the repository root: safe, fast and
/// unprivileged (program, leading arguments). `failover-agent` is the
/// workspace's build.
const RUNS: &[(&str, &[&str])] = &[
    ("failover-agent", &["check-config"]),
    ("failover-agent", &["--help"]),
    ("failover-agent", &["--version"]),
    ("failover-agent", &["help"]),
    ("promtool", &["check", "rules"]),
    ("promtool", &["test", "rules"]),
    ("amtool", &["check-config"]),
];

/// Commands only illustrated in the docs (they act on an operator's host),
/// each with the test that runs its equivalent. Keep it short: a command a
/// test can run belongs in that test's text instead.
const ILLUSTRATIVE: &[(&str, &str)] = &[];

/// Where commands count as run: test sources under tests/ (this file
/// excepted), xtask/src and ./dev, whitespace normalised.
fn corpus() -> String {
    fn walk(dir: &Path, out: &mut String) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<PathBuf> = entries.map(|e| e.expect("a directory entry").path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") && !p.ends_with("tests/tests/docs.rs") {
                out.push_str(&normalise(&std::fs::read_to_string(&p).expect("reading a source")));
                out.push('\n');
            }
        }
    }
    let root = root();
    let mut out = normalise(&std::fs::read_to_string(root.join("dev")).expect("reading ./dev"));
    out.push('\n');
    walk(&root.join("tests"), &mut out);
    walk(&root.join("xtask/src"), &mut out);
    out
}

/// Whether this test runs `command` itself, and its program.
fn runnable(command: &str) -> Option<&'static str> {
    if command.contains(|c: char| "|&;<>$`\"'*?(){}".contains(c)) {
        return None;
    }
    let words: Vec<&str> = command.split_whitespace().collect();
    RUNS.iter().find(|(prog, args)| words.first() == Some(prog) && words[1..].starts_with(args)).map(|(p, _)| *p)
}

/// Runs a runnable command from the repository root; a problem if it fails.
fn run_shown(shown: &Shown, program: &str) -> Option<String> {
    let words: Vec<&str> = shown.command.split_whitespace().collect();
    let mut cmd = if program == "failover-agent" {
        Command::new(agent_binary())
    } else if have(program, "every_command_in_the_docs_is_run") {
        Command::new(program)
    } else {
        return None;
    };
    let out = cmd.args(&words[1..]).current_dir(root()).output().expect("starting the command");
    (!out.status.success()).then(|| {
        format!(
            "{}: `{}` failed ({}): {}{}",
            shown.at,
            shown.command,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The problems with the commands of `docs`: those no test runs, and
/// ILLUSTRATIVE entries no doc shows any more. `run` runs a runnable one.
fn command_problems(
    docs: &[Doc],
    corpus: &str,
    illustrative: &[(&str, &str)],
    run: &mut dyn FnMut(&Shown, &str) -> Option<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for doc in docs {
        for shown in commands(doc) {
            if let Some(program) = runnable(&shown.command) {
                problems.extend(run(&shown, program));
            } else if let Some((c, _)) = illustrative.iter().find(|(c, _)| normalise(c) == shown.command) {
                used.insert(*c);
            } else if !corpus.contains(&shown.command) {
                problems.push(format!(
                    "{}: `{}` is run by no test: write its exact text in the test (under tests/, in \
                     xtask/src or ./dev) that runs it, or have tests/tests/docs.rs run it (RUNS); \
                     see docs/development.md, \"Commands in the docs\"",
                    shown.at, shown.command
                ));
            }
        }
        for block in split(&doc.text).0.iter().filter(|b| !SHELL_LANGS.contains(&b.lang.as_str())) {
            if let Some((n, _)) = block.lines.iter().find(|(_, l)| l.starts_with("$ ")) {
                problems.push(format!(
                    "{}:{n}: a shell prompt in a ```{} block: mark the block ```console so its commands are checked",
                    doc.name, block.lang
                ));
            }
        }
    }
    for (c, covered_by) in illustrative {
        assert!(!covered_by.trim().is_empty(), "ILLUSTRATIVE `{c}` must name the test that covers it");
        if !used.contains(c) {
            problems.push(format!("ILLUSTRATIVE lists `{c}`, which no doc shows any more: remove it"));
        }
    }
    problems
}

#[test]
fn every_command_in_the_docs_is_run() {
    let docs = docs();
    let shown: usize = docs.iter().map(|d| commands(d).len()).sum();
    assert!(shown >= 3, "found only {shown} commands in the docs: the extraction is broken");
    let problems = command_problems(&docs, &corpus(), ILLUSTRATIVE, &mut run_shown);
    assert!(problems.is_empty(), "commands in the docs:\n{}", problems.join("\n"));
}

#[test]
fn a_command_without_a_test_is_named_with_its_file_and_line() {
    let doc = Doc {
        name: "docs/x.md".into(),
        text: "# X\n\n```sh\n./dev demo   # known\nfailover-agent frobnicate \\\n  --all\n```\n\n```console\n\
               $ ./dev test\noutput line\n```\n\n```\n$ hidden --command\n```\n"
            .into(),
    };
    let found: Vec<String> = commands(&doc).into_iter().map(|s| format!("{} {}", s.at, s.command)).collect();
    assert_eq!(
        found,
        ["docs/x.md:4 ./dev demo", "docs/x.md:5 failover-agent frobnicate --all", "docs/x.md:10 ./dev test"]
    );
    let corpus = "#   ./dev demo    install what is missing\n./dev test\n";
    let problems = command_problems(&[doc], corpus, &[], &mut |_, _| None);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].starts_with("docs/x.md:5: `failover-agent frobnicate --all` is run by no test"),
        "{problems:#?}"
    );
    assert!(problems[1].starts_with("docs/x.md:15: a shell prompt in a ``` block"), "{problems:#?}");
    let stale = command_problems(&[], "", &[("apt-get install x", "deploy.rs")], &mut |_, _| None);
    assert_eq!(stale.len(), 1, "{stale:#?}");
}

#[test]
fn runnable_commands_are_only_plain_safe_ones() {
    assert_eq!(runnable("failover-agent check-config deploy/failover-agent.example.toml"), Some("failover-agent"));
    assert_eq!(runnable("promtool check rules deploy/prometheus/alerts.yml"), Some("promtool"));
    assert_eq!(runnable("failover-agent uninstall"), None);
    assert_eq!(runnable("failover-agent check-config x.toml && failover-agent uninstall"), None);
    assert_eq!(runnable("failover-agent check-config $(cat x)"), None);
}

// ---------------------------------------------------------------------------
// Links

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to hyphens; a repeated one gets -1, -2, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in split(text).1 {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().trim_end_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 { slug.clone() } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

/// `path` with `.` and `..` resolved lexically; None if it leaves the root.
fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    let p: PathBuf = parts.iter().collect();
    p.starts_with(root).then_some(p)
}

/// The relative link targets of a doc's prose (inline code removed), with
/// their line numbers.
fn links(doc: &Doc) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in split(&doc.text).1 {
        let prose: String = line.split('`').step_by(2).collect();
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(|c: char| c == ')' || c.is_whitespace()).unwrap_or(rest.len());
            let target = &rest[..end];
            let scheme = target.find(':').is_some_and(|c| !target[..c].contains(['/', '#']));
            if !scheme && !target.is_empty() {
                out.push((n, target.to_string()));
            }
        }
    }
    out
}

/// Broken relative links of `docs` (files under `root`): a missing file, or
/// an anchor no heading of the Markdown file makes. Targets outside the
/// repository are not its to check.
fn link_problems(root: &Path, docs: &[Doc]) -> Vec<String> {
    let mut problems = Vec::new();
    for doc in docs {
        let here = root.join(&doc.name);
        for (n, target) in links(doc) {
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path =
                if file.is_empty() { here.clone() } else { here.parent().expect("a doc's directory").join(file) };
            let Some(path) = inside(root, &path) else { continue };
            let named = path.strip_prefix(root).map_or(path.display().to_string(), |p| p.display().to_string());
            let text = docs.iter().find(|d| root.join(&d.name) == path).map(|d| d.text.clone());
            if text.is_none() && !path.exists() {
                problems.push(format!("{}:{n}: link to {target}: {named} does not exist", doc.name));
                continue;
            }
            if anchor.is_empty() || path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let text = text.unwrap_or_else(|| std::fs::read_to_string(&path).unwrap_or_default());
            let known = anchors(&text);
            if !known.contains(anchor) {
                problems.push(format!(
                    "{}:{n}: link to {target}: {named} has no heading with anchor #{anchor} (it has: {})",
                    doc.name,
                    known.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    problems
}

#[test]
fn relative_links_between_the_docs_reach_their_file_and_anchor() {
    let docs = docs();
    let found: usize = docs.iter().map(|d| links(d).len()).sum();
    assert!(found >= 20, "found only {found} links: the extraction is broken");
    let problems = link_problems(&root(), &docs);
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
}

#[test]
fn a_broken_link_or_anchor_is_named() {
    let root = root();
    let docs = [
        Doc {
            name: "README.md".into(),
            text: "# T\n\n## A `b`: c (d)\n\nSee [x](docs/y.md#two), [z](#a-b-c-d).\n".into(),
        },
        Doc {
            name: "docs/y.md".into(),
            text: "# Y\n## One\n```\n## Two\n```\nto [r](../README.md#gone), [m](../no/such.md), \
                   [`c`](../Cargo.toml), [w](https://example.org/x#y), [o](../../outside.md)\n"
                .into(),
        },
    ];
    let problems = link_problems(&root, &docs);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].starts_with("README.md:5: link to docs/y.md#two: docs/y.md has no heading"), "{problems:#?}");
    assert!(problems[1].starts_with("docs/y.md:6: link to ../README.md#gone"), "{problems:#?}");
    assert!(problems[2].contains("no/such.md does not exist"), "{problems:#?}");
    assert!(anchors("## Keys\n### `[[group.uplink]]`\n## Keys\n").contains("keys-1"));
    assert!(anchors("### `[[group.uplink]]`\n").contains("groupuplink"));
}

// ---------------------------------------------------------------------------
// Configuration reference

/// Keys by table, with the line each was first named on.
type Keys = BTreeMap<String, BTreeMap<String, usize>>;

/// The keys of docs/configuration.md's "## Keys" section: one table per
/// "### `[table]`" heading, a key per row whose first cell is `key`.
fn documented_keys(text: &str) -> Keys {
    let mut keys = Keys::new();
    let (mut in_keys, mut table) = (false, None::<String>);
    for (n, line) in split(text).1 {
        if let Some(h) = line.strip_prefix("## ") {
            in_keys = h.trim() == "Keys";
            table = None;
        } else if let (true, Some(h)) = (in_keys, line.strip_prefix("### ")) {
            table = Some(h.trim().trim_matches('`').trim_matches(['[', ']']).to_string());
        } else if let (true, Some(t), Some(row)) = (in_keys, &table, line.strip_prefix("| `")) {
            let key = row.split('`').next().unwrap_or_default().to_string();
            keys.entry(t.clone()).or_default().entry(key).or_insert(n);
        }
    }
    keys
}

/// The keys of the example configuration, commented-out ones included
/// (`# key = ...` at the start of a line), by the table they are in.
fn example_keys(text: &str) -> Keys {
    let mut keys = Keys::new();
    let mut table = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if let Some(h) = t.strip_prefix('[') {
            table = h.split(']').next().unwrap_or_default().trim_start_matches('[').to_string();
            continue;
        }
        let bare = t.strip_prefix('#').map_or(t, str::trim_start);
        let key: String = bare.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        if !key.is_empty() && bare[key.len()..].trim_start().starts_with('=') {
            keys.entry(table.clone()).or_default().entry(key).or_insert(i + 1);
        }
    }
    keys
}

fn key_problems(accepted: &BTreeMap<String, BTreeSet<String>>, file: &str, found: &Keys) -> Vec<String> {
    let mut problems = Vec::new();
    for (table, keys) in accepted {
        for key in keys {
            if !found.get(table).is_some_and(|k| k.contains_key(key)) {
                problems.push(format!("{file}: the parser accepts `{key}` in [{table}], which is not there"));
            }
        }
    }
    for (table, keys) in found {
        for (key, n) in keys {
            if !accepted.get(table).is_some_and(|k| k.contains(key)) {
                problems.push(format!("{file}:{n}: `{key}` in [{table}] is not a key the parser accepts"));
            }
        }
    }
    problems
}

#[test]
fn the_configuration_reference_and_the_example_name_exactly_the_parsers_keys() {
    let accepted: BTreeMap<String, BTreeSet<String>> = failover_agent::config::accepted_keys()
        .into_iter()
        .map(|(t, keys)| (t.to_string(), keys.into_iter().map(str::to_string).collect()))
        .collect();
    // The introspection itself: the tables there are, and keys known to be in them.
    assert_eq!(accepted.keys().map(String::as_str).collect::<Vec<_>>(), ["agent", "group", "group.uplink"]);
    for (table, key) in [("agent", "xdp_mode"), ("group", "probe_interval_ms"), ("group.uplink", "vlan")] {
        assert!(accepted[table].contains(key), "accepted_keys lacks {table}.{key}: {accepted:?}");
    }
    let root = root();
    let reference = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let example = std::fs::read_to_string(root.join("deploy/failover-agent.example.toml")).unwrap();
    let mut problems = key_problems(&accepted, "docs/configuration.md", &documented_keys(&reference));
    problems.extend(key_problems(&accepted, "deploy/failover-agent.example.toml", &example_keys(&example)));
    assert!(problems.is_empty(), "configuration keys:\n{}", problems.join("\n"));

    // A key the parser does not know is caught, with its line.
    let bogus = reference.replacen("| `vlan` |", "| `vlan_id` |", 1);
    let problems = key_problems(&accepted, "docs/configuration.md", &documented_keys(&bogus));
    assert_eq!(problems.len(), 2, "{problems:#?}");

    let out = Command::new(agent_binary())
        .arg("check-config")
        .arg(root.join("deploy/failover-agent.example.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "check-config on the example: {}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------
// Performance

#[test]
fn the_performance_doc_carries_the_latest_bench_report() {
    // `cargo xtask bench` writes results/latest/report.md; docs/performance.md
    // shows it. Every row of its tables must be there as it is, so that a new
    // run of record is not left out of the docs (nor a figure edited by hand).
    let root = root();
    let report = std::fs::read_to_string(root.join("results/latest/report.md")).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/performance.md")).unwrap();
    let lines: BTreeSet<&str> = doc.lines().map(str::trim_end).collect();
    let rows: Vec<&str> = report.lines().map(str::trim_end).filter(|l| l.starts_with('|')).collect();
    assert!(rows.len() >= 20, "only {} table rows in results/latest/report.md", rows.len());
    let missing: Vec<&str> = rows.into_iter().filter(|r| !lines.contains(r)).collect();
    assert!(
        missing.is_empty(),
        "docs/performance.md lacks these rows of results/latest/report.md (copy the new report in):\n{}",
        missing.join("\n")
    );
}
