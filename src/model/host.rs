//! A machine as a user names it: `ADDRESS`, `ADDRESS:PORT`, `USER@ADDRESS[:PORT]`.

/// One host of a pool, as written in `hosts`: `ADDRESS`, `ADDRESS:PORT`, `USER@ADDRESS[:PORT]`
/// (`[v6]:PORT` for IPv6 with a port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Host {
    pub user: Option<String>,
    pub address: String,
    pub port: Option<u16>,
}

impl std::str::FromStr for Host {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, rest) = match s.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
            Some(_) => return Err(format!("{s:?}: empty user name before @")),
            None => (None, s),
        };
        let (address, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: missing ] after an IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("{s:?}: unexpected text after ]")),
            };
            (addr.to_string(), port)
        } else {
            match rest.split_once(':') {
                Some((a, p)) => (a.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if address.is_empty() || address.chars().any(char::is_whitespace) {
            return Err(format!("{s:?}: not a host name or address"));
        }
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{s:?}: the port must be a number from 1 to 65535"))?,
            ),
            None => None,
        };
        Ok(Host {
            user,
            address,
            port,
        })
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        match (self.address.contains(':'), self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.address),
            (false, Some(p)) => write!(f, "{}:{p}", self.address),
            (_, None) => write!(f, "{}", self.address),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        let h: Host = "10.0.0.5".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (h.user, h.address.as_str(), h.port),
            (None, "10.0.0.5", None)
        );
        let h: Host = "ubuntu@gpu-1:2222"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.to_string(), "ubuntu@gpu-1:2222");
        let h: Host = "[fe80::1]:22".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((h.address.as_str(), h.port), ("fe80::1", Some(22)));
        assert_eq!(h.to_string(), "[fe80::1]:22");
        assert!("host:0".parse::<Host>().is_err());
        assert!("host:http".parse::<Host>().is_err());
        assert!("@host".parse::<Host>().is_err());
        assert!("a b".parse::<Host>().is_err());
    }
}
