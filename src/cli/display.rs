//! What the client shows while it follows an operation, and at its end: on a terminal a
//! live line per gateway node (a spinner while pending, then the answer with its attempts,
//! latency and error) under a count; otherwise one plain line per change; with
//! `--output json`, only the operation as the API returned it. Words carry every meaning
//! (acked, failed, pending), so nothing depends on colour.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::diagnostics::printable;

/// How the client writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Lines for people (live progress on a terminal).
    Text,
    /// The API's JSON, one document, nothing else on standard output.
    Json,
}

/// A copy of what the server sent with every string made safe for a terminal
/// ([`printable`]): the text output shows it, `--output json` prints the original exactly.
pub fn printable_json(value: &Value) -> Value {
    match value {
        Value::String(text) => Value::String(printable(text).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(printable_json).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, field)| (printable(name).into_owned(), printable_json(field)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// One node's line: `acked   10.2.0.11:9000  GATEWAY-PUBLIC  1 attempt, 2.4 ms`.
pub fn node_line(node: &Value) -> String {
    let state = node["state"].as_str().unwrap_or("?");
    let attempts = node["attempts"].as_u64().unwrap_or(0);
    let mut line = format!(
        "{state:<8}{}  {}",
        node["node"].as_str().unwrap_or("?"),
        node["group"].as_str().unwrap_or("?")
    );
    if state != "pending" {
        line.push_str(&format!(
            "  {attempts} attempt{}",
            if attempts == 1 { "" } else { "s" }
        ));
        if let Some(ms) = node["latencyMs"].as_f64() {
            line.push_str(&format!(", {ms:.1} ms"));
        }
    }
    if let Some(error) = node["error"].as_str() {
        line.push_str(&format!(": {error}"));
    }
    if let Some(idle) = node.pointer("/haproxy/idle")
        && idle["reached"] == false
    {
        line.push_str(&format!(
            "  (HAProxy: waiting for {} sessions to end, {:.0} ms so far)",
            idle["sessions"],
            idle["waitedMs"].as_f64().unwrap_or(0.0)
        ));
    }
    if let Some(warmup) = node.pointer("/haproxy/warmup")
        && warmup["done"] == false
    {
        line.push_str(&format!(
            "  (HAProxy: warming up, {}% of the weight)",
            warmup["percent"]
        ));
    }
    line
}

/// `op_… offline succeeded: 2 of 2 nodes acknowledged`.
pub fn summary(operation: &Value) -> String {
    let nodes = operation["gateways"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let acked = nodes.iter().filter(|n| n["state"] == "acked").count();
    let mut line = format!(
        "{} {} {}: {acked} of {} node{} acknowledged",
        operation["id"].as_str().unwrap_or("?"),
        operation["action"].as_str().unwrap_or("?"),
        operation["state"].as_str().unwrap_or("?"),
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
    );
    if let Some(error) = operation["error"]["message"]
        .as_str()
        .or(operation["error"].as_str())
    {
        line.push_str(&format!("; {error}"));
    }
    line
}

/// The instances an operation acted on, one line each.
pub fn instance_lines(operation: &Value) -> Vec<String> {
    operation["instances"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|i| {
            format!(
                "instance {} ({} {}:{}): registry {}",
                i["instanceId"].as_str().unwrap_or("?"),
                i["app"].as_str().unwrap_or("?"),
                i["ip"].as_str().unwrap_or("?"),
                i["port"],
                i["registry"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// An array's items; none for anything else (a field the server left out).
fn items(value: &Value) -> &[Value] {
    value.as_array().map_or(&[][..], Vec::as_slice)
}

/// `status`: each instance on the IP, held or not, and the last operation.
pub fn status_lines(view: &Value) -> Vec<String> {
    let mut lines: Vec<String> = items(&view["instances"])
        .iter()
        .map(|i| {
            format!(
                "{} {} port {}: {}{}",
                i["app"].as_str().unwrap_or("?"),
                i["instanceId"].as_str().unwrap_or("?"),
                i["port"],
                i["status"].as_str().unwrap_or("?"),
                if i["held"] == true {
                    " (held offline by synchspeed)"
                } else {
                    ""
                }
            )
        })
        .collect();
    if lines.is_empty() {
        lines.push(format!(
            "no instance registered on {}",
            view["ip"].as_str().unwrap_or("?")
        ));
    }
    if view["lastOperation"].is_object() {
        lines.push(format!(
            "last operation: {}",
            summary(&view["lastOperation"])
        ));
    }
    lines
}

/// `holds`: what is held offline, since when, by which operation.
pub fn hold_lines(held: &Value) -> Vec<String> {
    let holds = items(&held["instances"]);
    if holds.is_empty() {
        return vec!["nothing is held offline".into()];
    }
    holds
        .iter()
        .map(|h| {
            format!(
                "{} {} ({}:{}) since {} by {}",
                h["app"].as_str().unwrap_or("?"),
                h["instanceId"].as_str().unwrap_or("?"),
                h["ip"].as_str().unwrap_or("?"),
                h["port"],
                h["since"].as_str().unwrap_or("?"),
                h["operationId"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// `ops`: one line an operation, and how to read the next page when there is one.
pub fn operation_lines(list: &Value) -> Vec<String> {
    let more = list["next"]
        .as_str()
        .map(|next| format!("more: synchspeed ops --before {next}"));
    items(&list["operations"])
        .iter()
        .map(|op| {
            format!(
                "{}  {}  {}  by {}",
                op["createdAt"].as_str().unwrap_or("?"),
                summary(op),
                op["target"]["ip"].as_str().unwrap_or("?"),
                op["caller"]["principal"]
                    .as_str()
                    .or(op["caller"]["addr"].as_str())
                    .unwrap_or("?")
            )
        })
        .chain(more)
        .collect()
}

/// Follows an operation's changes on the screen.
pub enum Display {
    /// Live bars on a terminal.
    Terminal(Terminal),
    /// One line per change (pipes, logs, CI): each node's line when it differs from the
    /// one printed last for it.
    Plain(HashMap<usize, String>),
    /// Nothing until the end.
    Quiet,
}

pub struct Terminal {
    bars: MultiProgress,
    count: ProgressBar,
    nodes: HashMap<usize, ProgressBar>,
}

impl Display {
    pub fn new(output: Output, terminal: bool) -> Self {
        match (output, terminal) {
            (Output::Json, _) => Self::Quiet,
            (Output::Text, true) => Self::Terminal(Terminal::new()),
            (Output::Text, false) => Self::Plain(HashMap::new()),
        }
    }

    /// The operation as it stands (the first event, or after a lag).
    pub fn operation(&mut self, operation: &Value) {
        let operation = &printable_json(operation);
        match self {
            Self::Terminal(terminal) => terminal.operation(operation),
            Self::Plain(printed) => {
                println!(
                    "{} {} {}",
                    operation["id"].as_str().unwrap_or("?"),
                    operation["action"].as_str().unwrap_or("?"),
                    operation["state"].as_str().unwrap_or("?")
                );
                for line in instance_lines(operation) {
                    println!("  {line}");
                }
                for (slot, node) in nodes_of(operation) {
                    print_changed(printed, slot, node);
                }
            }
            Self::Quiet => {}
        }
    }

    /// One node changed (an answer, or HAProxy progress).
    pub fn node(&mut self, slot: usize, node: &Value) {
        let node = &printable_json(node);
        match self {
            Self::Terminal(terminal) => terminal.node(slot, node),
            Self::Plain(printed) => print_changed(printed, slot, node),
            Self::Quiet => {}
        }
    }

    /// The end: the bars stay as drawn, then the summary.
    pub fn finish(&mut self, operation: &Value) {
        if let Self::Terminal(terminal) = self {
            terminal.finish(&printable_json(operation));
        }
    }
}

/// An operation's nodes with their slots (the `slot` of its node events).
pub fn nodes_of(operation: &Value) -> impl Iterator<Item = (usize, &Value)> {
    operation["gateways"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
}

/// A node's line, unless it is pending or what was printed last for it.
fn print_changed(printed: &mut HashMap<usize, String>, slot: usize, node: &Value) {
    if node["state"] == "pending" {
        return;
    }
    let line = node_line(node);
    if printed.get(&slot) != Some(&line) {
        println!("  {line}");
        printed.insert(slot, line);
    }
}

impl Terminal {
    fn new() -> Self {
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let count = bars.add(ProgressBar::new(0));
        count.set_style(
            ProgressStyle::with_template(
                "{prefix} {pos}/{len} nodes acknowledged [{bar:20}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Self {
            bars,
            count,
            nodes: HashMap::new(),
        }
    }

    fn operation(&mut self, operation: &Value) {
        let action = operation["action"].as_str().unwrap_or("?");
        self.count.set_prefix(action.to_owned());
        let nodes = operation["gateways"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        self.count.set_length(nodes.len() as u64);
        self.bars
            .println(format!(
                "{} {action} of {}",
                operation["id"].as_str().unwrap_or("?"),
                operation["target"]["ip"].as_str().unwrap_or("?")
            ))
            .ok();
        for line in instance_lines(operation) {
            self.bars.println(line).ok();
        }
        for (slot, node) in nodes.iter().enumerate() {
            self.node(slot, node);
        }
    }

    fn node(&mut self, slot: usize, node: &Value) {
        let bars = &self.bars;
        let bar = self.nodes.entry(slot).or_insert_with(|| {
            let bar = bars.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("  {spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        bar.set_message(node_line(node));
        if node["state"] != "pending" && !bar.is_finished() {
            bar.finish();
            if node["state"] == "acked" {
                self.count.inc(1);
            }
        }
    }

    fn finish(&mut self, operation: &Value) {
        for (slot, node) in nodes_of(operation) {
            self.node(slot, node);
        }
        for bar in self.nodes.values() {
            bar.finish();
        }
        // Abandoned, not finished: finishing would fill the count to the end.
        self.count
            .abandon_with_message(operation["state"].as_str().unwrap_or("?").to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_line_says_its_state_in_words_with_attempts_latency_and_error() {
        let acked = json!({"node": "10.2.0.11:9000", "group": "GW", "state": "acked",
            "attempts": 1, "latencyMs": 2.44, "error": null});
        assert_eq!(
            node_line(&acked),
            "acked   10.2.0.11:9000  GW  1 attempt, 2.4 ms"
        );
        let failed = json!({"node": "10.2.0.12:9000", "group": "GW", "state": "failed",
            "attempts": 3, "latencyMs": null, "error": "503 from node"});
        assert_eq!(
            node_line(&failed),
            "failed  10.2.0.12:9000  GW  3 attempts: 503 from node"
        );
    }

    #[test]
    fn text_output_escapes_what_a_terminal_would_obey_and_keeps_the_rest() {
        let hostile = json!({"instanceId": "i\u{1b}]0;PWNED\u{7}\u{1b}[31m", "port": 8080,
            "nested": [{"app": "ORDER\u{9b}2J"}]});
        let shown = printable_json(&hostile);
        let text = shown.to_string();
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{9b}'));
        assert_eq!(shown["instanceId"], "i\\u{1b}]0;PWNED\\u{7}\\u{1b}[31m");
        assert_eq!(shown["port"], 8080);
        assert_eq!(shown["nested"][0]["app"], "ORDER\\u{9b}2J");
    }

    #[test]
    fn the_summary_counts_acknowledged_nodes() {
        let operation = json!({"id": "op_1", "action": "offline", "state": "partial",
            "gateways": [{"state": "acked"}, {"state": "failed"}]});
        assert_eq!(
            summary(&operation),
            "op_1 offline partial: 1 of 2 nodes acknowledged"
        );
    }
}
