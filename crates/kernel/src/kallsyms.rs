//! `/proc/kallsyms`: the running kernel's symbols, and the `sympos` livepatch uses to tell
//! same-named symbols apart.
//!
//! Pure: parses text handed to it.

/// One kallsyms line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSymbol {
    /// Run-time address (0 when the reader may not see addresses).
    pub address: u64,
    /// The `nm`-style type letter (`T`, `t`, `D`, `b`...).
    pub kind: char,
    /// Symbol name.
    pub name: String,
    /// The module it belongs to, `None` for vmlinux.
    pub module: Option<String>,
}

/// The symbols of a kernel, in kallsyms order (address order for vmlinux), which is the
/// order livepatch counts `sympos` in.
#[derive(Debug, Clone, Default)]
pub struct Kallsyms {
    /// vmlinux's symbols, in order.
    pub vmlinux: Vec<KernelSymbol>,
}

impl Kallsyms {
    /// Parses kallsyms text; lines that do not parse are skipped; module symbols are dropped.
    pub fn parse(text: &str) -> Self {
        let mut vmlinux = Vec::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            let mut fields = line.split_whitespace();
            let (Some(address), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(address) = u64::from_str_radix(address, 16) else {
                continue;
            };
            let Some(kind) = kind.chars().next() else {
                continue;
            };
            if let Some(module) = fields.next() {
                let _ = module;
                continue;
            }
            vmlinux.push(KernelSymbol {
                address,
                kind,
                name: name.to_string(),
                module: None,
            });
        }
        Kallsyms { vmlinux }
    }

    /// Whether the addresses are real (a reader without `CAP_SYSLOG` sees zeroes).
    pub fn has_addresses(&self) -> bool {
        self.vmlinux.iter().any(|s| s.address != 0)
    }

    /// Every vmlinux symbol called `name`, in order.
    pub fn named<'k>(&'k self, name: &'k str) -> impl Iterator<Item = &'k KernelSymbol> + 'k {
        self.vmlinux.iter().filter(move |s| s.name == name)
    }

    /// The address of the unique vmlinux symbol `name`.
    pub fn unique(&self, name: &str) -> Option<u64> {
        let mut it = self.named(name);
        let first = it.next()?;
        it.next().is_none().then_some(first.address)
    }

    /// Livepatch's `sympos` of the symbol `name` at `address`: 0 when the name is unique, else
    /// its 1-based position among the symbols of that name. `None` if no such symbol.
    pub fn sympos(&self, name: &str, address: u64) -> Option<u64> {
        let all: Vec<&KernelSymbol> = self.named(name).collect();
        if all.len() == 1 {
            return (all[0].address == address).then_some(0);
        }
        all.iter()
            .position(|s| s.address == address)
            .map(|i| i as u64 + 1)
    }

    /// How far the running kernel is from its link address: run-time `_text` minus
    /// `link_text` (the vmlinux file's `_text`).
    pub fn slide(&self, link_text: u64) -> Option<u64> {
        Some(self.unique("_text")?.wrapping_sub(link_text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "ffffffff81000000 T _text\n\
        ffffffff81001000 t show\n\
        ffffffff81002000 T meminfo_proc_show\n\
        ffffffff81003000 t show\r\n\
        ffffffffc0000000 t show\t[some_module]\n\
        garbage\n";

    #[test]
    fn parse_and_sympos() {
        let k = Kallsyms::parse(TEXT);
        assert_eq!(k.vmlinux.len(), 4);
        assert_eq!(k.unique("meminfo_proc_show"), Some(0xffffffff81002000));
        assert_eq!(k.unique("show"), None);
        assert_eq!(k.sympos("meminfo_proc_show", 0xffffffff81002000), Some(0));
        assert_eq!(k.sympos("show", 0xffffffff81003000), Some(2));
        assert_eq!(k.sympos("show", 0xffffffff81000001), None);
        assert_eq!(k.slide(0xffffffff81000000), Some(0));
        assert!(k.has_addresses());
    }
}
