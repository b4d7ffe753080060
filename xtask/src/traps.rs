//! The trap counters the hypervisor prints on the console when a cell powers off (or on the
//! hypervisor call `0xC600_0000`), read back from a console log, and the trap rates between
//! two such tables (`cargo xtask boot-time`). The table looks like this, one row per CPU of
//! the cell, one column per trap reason after `total`; the time is guest time since reset:
//!
//! ```text
//! cellvisor: trap counters of cell "linux" at 9.401 s:
//!   cpu        total         irq maintenance        gicd ...
//!   0           1327         744           0         376 ...
//!   1            660         507           0           1 ...
//! ```

use std::fmt::Write as _;

use anyhow::{bail, Context as _, Result};

/// What the first line of a table starts with, before the quoted cell name.
pub const TITLE: &str = "cellvisor: trap counters of cell ";

/// One trap counter table.
#[derive(Debug, Clone, PartialEq)]
pub struct TrapTable {
    /// The cell's name.
    pub cell: String,
    /// Guest time since reset at which the counters were read, in seconds.
    pub time: f64,
    /// The column names after `cpu`: `total`, then the reasons.
    pub columns: Vec<String>,
    /// One row per CPU of the cell: the CPU number and one count per column.
    pub rows: Vec<(u32, Vec<u64>)>,
}

impl TrapTable {
    /// The last table in `lines` (a console log, one line each). Errors name the line (counted
    /// from 1) that is not as expected.
    pub fn parse_last(lines: &[impl AsRef<str>]) -> Result<Self> {
        let Some(start) = lines.iter().rposition(|l| l.as_ref().contains(TITLE)) else {
            bail!("no trap counter table (no line containing {TITLE:?})");
        };
        let line = |index: usize| lines.get(index).map_or("", |l| l.as_ref());
        let (cell, time) = parse_title(line(start))
            .with_context(|| format!("line {}: {:?}", start + 1, line(start)))?;
        let columns = parse_header(line(start + 1)).with_context(|| {
            format!(
                "line {} (the header after the title): {:?}",
                start + 2,
                line(start + 1)
            )
        })?;
        let mut rows = Vec::new();
        for index in start + 2..lines.len() {
            let text = line(index);
            let mut words = text.split_whitespace();
            let Some(Ok(cpu)) = words.next().map(str::parse::<u32>) else {
                break;
            };
            let counts = words
                .map(|word| {
                    word.parse::<u64>()
                        .with_context(|| format!("{word:?} is no count"))
                })
                .collect::<Result<Vec<u64>>>()
                .and_then(|counts| {
                    if counts.len() == columns.len() {
                        Ok(counts)
                    } else {
                        bail!("{} counts for {} columns", counts.len(), columns.len())
                    }
                })
                .with_context(|| format!("line {}: row of CPU {cpu}: {text:?}", index + 1))?;
            if rows.iter().any(|(c, _)| *c == cpu) {
                bail!("line {}: a second row for CPU {cpu}", index + 1);
            }
            rows.push((cpu, counts));
        }
        if rows.is_empty() {
            bail!(
                "line {}: the trap counter table has no rows: {:?}",
                start + 3,
                line(start + 2)
            );
        }
        Ok(Self {
            cell,
            time,
            columns,
            rows,
        })
    }

    /// The sum over all CPUs of the `total` column.
    pub fn total(&self) -> u64 {
        self.rows.iter().map(|(_, counts)| counts[0]).sum()
    }
}

/// `"linux" at 9.401 s:` after [`TITLE`]: the cell's name and the time.
fn parse_title(line: &str) -> Result<(String, f64)> {
    let rest = &line[line.find(TITLE).context("no title")? + TITLE.len()..];
    let parsed = rest.strip_prefix('"').and_then(|rest| {
        let (cell, rest) = rest.rsplit_once("\" at ")?;
        let time = rest.trim_end().strip_suffix(" s:")?;
        Some((cell, time))
    });
    let Some((cell, time)) = parsed else {
        bail!("expected {TITLE}\"NAME\" at SECONDS s:");
    };
    let seconds: f64 = time
        .parse()
        .with_context(|| format!("{time:?} is no number of seconds"))?;
    if !seconds.is_finite() || seconds < 0.0 {
        bail!("{time:?} is no time");
    }
    Ok((cell.to_owned(), seconds))
}

/// `cpu total irq ...`: the column names after `cpu`.
fn parse_header(line: &str) -> Result<Vec<String>> {
    let mut words = line.split_whitespace();
    if words.next() != Some("cpu") || words.next() != Some("total") {
        bail!("expected the column names `cpu total REASON...`");
    }
    let mut columns = vec!["total".to_owned()];
    for word in words {
        if columns.iter().any(|c| c == word) {
            bail!("column {word:?} appears twice");
        }
        columns.push(word.to_owned());
    }
    Ok(columns)
}

/// The traps per second of guest time between two tables of the same cell, summed over its
/// CPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    /// The number of CPUs of the cell.
    pub cpus: usize,
    /// The guest time between the two tables, in seconds.
    pub seconds: f64,
    /// All traps per second.
    pub total: f64,
    /// Traps per second by reason, in the order of the table's columns.
    pub reasons: Vec<(String, f64)>,
}

impl Rates {
    /// `(later − earlier) / (time of later − time of earlier)` per column, summed over the
    /// CPUs; both tables must have the same columns and CPUs, and `later` a later time.
    pub fn between(earlier: &TrapTable, later: &TrapTable) -> Result<Self> {
        if earlier.columns != later.columns {
            bail!(
                "the tables have different columns: {} and {}",
                earlier.columns.join(" "),
                later.columns.join(" ")
            );
        }
        let cpus = |table: &TrapTable| table.rows.iter().map(|(cpu, _)| *cpu).collect::<Vec<_>>();
        if cpus(earlier) != cpus(later) {
            bail!(
                "the tables have different CPUs: {:?} and {:?}",
                cpus(earlier),
                cpus(later)
            );
        }
        let seconds = later.time - earlier.time;
        if seconds <= 0.0 {
            bail!(
                "the second table ({} s) is not later than the first ({} s)",
                later.time,
                earlier.time
            );
        }
        let mut rates: Vec<(String, f64)> = earlier
            .columns
            .iter()
            .enumerate()
            .map(|(column, name)| {
                let difference: f64 = earlier
                    .rows
                    .iter()
                    .zip(&later.rows)
                    .map(|((_, a), (_, b))| b[column] as f64 - a[column] as f64)
                    .sum();
                (name.clone(), difference / seconds)
            })
            .collect();
        let total = rates.remove(0).1;
        Ok(Self {
            cpus: earlier.rows.len(),
            seconds,
            total,
            reasons: rates,
        })
    }
}

impl std::fmt::Display for Rates {
    /// `41.3 traps/s (irq 30.1, sgi 8.0) over 10.012 s`: the reasons with a rate that is not
    /// zero.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut reasons = String::new();
        for (name, rate) in self.reasons.iter().filter(|(_, rate)| *rate != 0.0) {
            if !reasons.is_empty() {
                reasons.push_str(", ");
            }
            write!(reasons, "{name} {rate:.1}")?;
        }
        write!(f, "{:.1} traps/s", self.total)?;
        if !reasons.is_empty() {
            write!(f, " ({reasons})")?;
        }
        write!(f, " over {:.3} s", self.seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "  cpu        total         irq maintenance        gicd        gicr         sgi      sysreg        psci       smccc     outside       other";

    fn log(title: &str, rows: &[&str]) -> Vec<String> {
        let mut lines = vec![
            "cellvisor-initramfs: guest time 0.959481 s (59967566 ticks at 62500000 Hz)".to_owned(),
            "[    0.848149] reboot: Power down".to_owned(),
            "cellvisor: cell \"linux\" (CPU 0) asked for system off".to_owned(),
            title.to_owned(),
            HEADER.to_owned(),
        ];
        lines.extend(rows.iter().map(|r| (*r).to_owned()));
        lines
    }

    const TITLE_A: &str = "cellvisor: trap counters of cell \"linux\" at 0.960 s:";
    const ROWS_A: [&str; 2] = [
        "  0            887         320           0         369          43         145           0          10           0           0           0",
        "  1            722         428           0          22          32         240           0           0           0           0           0",
    ];

    #[test]
    fn reads_the_table() {
        let mut lines = log(TITLE_A, &ROWS_A);
        lines.push("[qemu] qemu-system-aarch64: terminating on signal 15".to_owned());
        let table = TrapTable::parse_last(&lines).unwrap();
        assert_eq!(table.cell, "linux");
        assert_eq!(table.time, 0.960);
        assert_eq!(
            table.columns,
            [
                "total",
                "irq",
                "maintenance",
                "gicd",
                "gicr",
                "sgi",
                "sysreg",
                "psci",
                "smccc",
                "outside",
                "other"
            ]
        );
        assert_eq!(
            table.rows,
            [
                (0, vec![887, 320, 0, 369, 43, 145, 0, 10, 0, 0, 0]),
                (1, vec![722, 428, 0, 22, 32, 240, 0, 0, 0, 0, 0]),
            ]
        );
        assert_eq!(table.total(), 887 + 722);
    }

    #[test]
    fn reads_the_last_table_and_odd_names() {
        let mut lines = log(
            "cellvisor: trap counters of cell \"linux\" at 0.500 s:",
            &["  0 1 1 0 0 0 0 0 0 0 0 0"],
        );
        lines.push("cellvisor: trap counters of cell \"a \" at b\" at 12.5 s:".to_owned());
        lines.push("  cpu total irq".to_owned());
        lines.push("  2 7 7".to_owned());
        lines.push("  5 3 1".to_owned());
        let table = TrapTable::parse_last(&lines).unwrap();
        assert_eq!((table.cell.as_str(), table.time), ("a \" at b", 12.5));
        assert_eq!(table.columns, ["total", "irq"]);
        assert_eq!(table.rows, [(2, vec![7, 7]), (5, vec![3, 1])]);
    }

    #[test]
    fn says_what_is_wrong_and_where() {
        let error = |lines: &[String]| format!("{:#}", TrapTable::parse_last(lines).unwrap_err());
        assert_eq!(
            error(&["Run /init".to_owned()]),
            "no trap counter table (no line containing \"cellvisor: trap counters of cell \")"
        );
        assert_eq!(
            error(&log(
                "cellvisor: trap counters of cell linux at 1 s:",
                &ROWS_A
            )),
            "line 4: \"cellvisor: trap counters of cell linux at 1 s:\": \
             expected cellvisor: trap counters of cell \"NAME\" at SECONDS s:"
        );
        assert_eq!(
            error(&log(
                "cellvisor: trap counters of cell \"linux\" at x s:",
                &ROWS_A
            )),
            "line 4: \"cellvisor: trap counters of cell \\\"linux\\\" at x s:\": \
             \"x\" is no number of seconds: invalid float literal"
        );
        let mut no_header = log(TITLE_A, &ROWS_A);
        no_header.remove(4);
        assert!(error(&no_header)
            .starts_with("line 5 (the header after the title): \"  0            887"));
        assert!(error(&no_header).ends_with("expected the column names `cpu total REASON...`"));
        let mut truncated = log(TITLE_A, &ROWS_A);
        truncated.truncate(4);
        assert_eq!(
            error(&truncated),
            "line 5 (the header after the title): \"\": expected the column names `cpu total REASON...`"
        );
        assert_eq!(
            error(&log(TITLE_A, &[])),
            "line 6: the trap counter table has no rows: \"\""
        );
        let short = "  0 887 320 0";
        assert_eq!(
            error(&log(TITLE_A, &[short])),
            format!("line 6: row of CPU 0: {short:?}: 3 counts for 11 columns")
        );
        let bad = "  1 722 428 0 22 32 240 0 0 0 0 x";
        assert_eq!(
            error(&log(TITLE_A, &[ROWS_A[0], bad])),
            format!(
                "line 7: row of CPU 1: {bad:?}: \"x\" is no count: invalid digit found in string"
            )
        );
        assert_eq!(
            error(&log(TITLE_A, &[ROWS_A[0], ROWS_A[0]])),
            "line 7: a second row for CPU 0"
        );
        let mut twice = log(TITLE_A, &ROWS_A);
        twice[4] = "  cpu total irq irq".to_owned();
        assert!(error(&twice).ends_with("column \"irq\" appears twice"));
    }

    fn table(time: f64, rows: &[(u32, &[u64])]) -> TrapTable {
        TrapTable {
            cell: "linux".to_owned(),
            time,
            columns: ["total", "irq", "gicd", "sgi"].map(str::to_owned).to_vec(),
            rows: rows.iter().map(|(cpu, c)| (*cpu, c.to_vec())).collect(),
        }
    }

    #[test]
    fn rates_are_differences_over_time_summed_over_cpus() {
        let a = table(1.0, &[(0, &[30, 20, 10, 0]), (1, &[5, 5, 0, 0])]);
        let b = table(11.0, &[(0, &[330, 220, 10, 100]), (1, &[108, 105, 0, 3])]);
        let rates = Rates::between(&a, &b).unwrap();
        assert_eq!(rates.cpus, 2);
        assert_eq!(rates.seconds, 10.0);
        assert_eq!(rates.total, 40.3);
        assert_eq!(
            rates.reasons,
            [
                ("irq".to_owned(), 30.0),
                ("gicd".to_owned(), 0.0),
                ("sgi".to_owned(), 10.3)
            ]
        );
        assert_eq!(
            rates.to_string(),
            "40.3 traps/s (irq 30.0, sgi 10.3) over 10.000 s"
        );
        let idle = Rates::between(
            &a,
            &table(
                3.5,
                &a.rows.iter().map(|(c, r)| (*c, &r[..])).collect::<Vec<_>>(),
            ),
        )
        .unwrap();
        assert_eq!(idle.to_string(), "0.0 traps/s over 2.500 s");
    }

    #[test]
    fn rates_need_matching_tables() {
        let a = table(1.0, &[(0, &[1, 1, 0, 0]), (1, &[1, 1, 0, 0])]);
        let error = |b: &TrapTable| Rates::between(&a, b).unwrap_err().to_string();
        assert_eq!(
            error(&table(2.0, &[(0, &[1, 1, 0, 0])])),
            "the tables have different CPUs: [0, 1] and [0]"
        );
        assert_eq!(
            error(&table(1.0, &[(0, &[1, 1, 0, 0]), (1, &[1, 1, 0, 0])])),
            "the second table (1 s) is not later than the first (1 s)"
        );
        let mut other = a.clone();
        other.time = 2.0;
        other.columns[3] = "psci".to_owned();
        assert_eq!(
            error(&other),
            "the tables have different columns: total irq gicd sgi and total irq gicd psci"
        );
    }
}
