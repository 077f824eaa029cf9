//! What XDP program a NIC runs, and how, as the kernel reports it through `ip -d -j link`: the
//! one reader the agent (is its NIC taken? in which mode did its program end up?) and the lab
//! (is the pass program on the LB's bridge port, natively?) share.

use std::{
    borrow::ToOwned,
    process::Command,
    string::{String, ToString},
};

/// How an XDP program is attached to a NIC (the kernel's `XDP_ATTACHED_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// In the driver: the fast path.
    Native,
    /// In the kernel stack (`xdpgeneric`): works everywhere, much slower.
    Generic,
    /// Offloaded to the NIC itself.
    Offload,
    /// Several programs, in several modes at once.
    Multi,
}

impl AttachMode {
    /// As `status` shows it (and as it serializes).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Offload => "offload",
            Self::Multi => "multi",
        }
    }

    /// The mode of the kernel's `XDP_ATTACHED_*` number (`ip -j` prints it as `mode`).
    pub fn from_kernel(mode: u64) -> Option<Self> {
        match mode {
            1 => Some(Self::Native),
            2 => Some(Self::Generic),
            3 => Some(Self::Offload),
            4 => Some(Self::Multi),
            _ => None,
        }
    }
}

/// The XDP program attached to a NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpAttachment {
    /// How it is attached.
    pub mode: AttachMode,
    /// The program's id (`bpftool prog show id N`), when reported (not for `Multi`).
    pub prog_id: Option<u64>,
    /// The program's name, when reported.
    pub prog_name: Option<String>,
}

/// Why a NIC's XDP state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum XdpAttachmentError {
    /// `ip` could not be started (not installed?).
    #[error("running `{command}`: {source}")]
    Start {
        command: String,
        source: std::io::Error,
    },
    /// `ip` failed, e.g. there is no such interface or namespace.
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    /// `ip` answered something that is not its JSON link list.
    #[error("`{command}` printed no JSON link list: {detail}")]
    Unreadable { command: String, detail: String },
    /// The kernel reported an attach mode this code does not know.
    #[error("unknown XDP attach mode {mode} on {iface}")]
    UnknownMode { iface: String, mode: String },
}

impl XdpAttachment {
    /// The XDP program on `iface` in network namespace `netns` (`ip -n NETNS`; `None`: the
    /// caller's own), if any.
    pub fn read(netns: Option<&str>, iface: &str) -> Result<Option<Self>, XdpAttachmentError> {
        let mut cmd = Command::new("ip");
        if let Some(ns) = netns {
            cmd.args(["-n", ns]);
        }
        cmd.args(["-d", "-j", "link", "show", "dev", iface]);
        let command = std::format!(
            "ip {}",
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<std::vec::Vec<_>>()
                .join(" ")
        );
        let out = cmd.output().map_err(|source| XdpAttachmentError::Start {
            command: command.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(XdpAttachmentError::Failed {
                command,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Self::from_ip_link_json(&out.stdout, iface).map_err(|e| match e {
            XdpAttachmentError::Unreadable { detail, .. } => {
                XdpAttachmentError::Unreadable { command, detail }
            }
            other => other,
        })
    }

    /// The attachment described by `ip -d -j link show dev IFACE`'s output.
    pub fn from_ip_link_json(json: &[u8], iface: &str) -> Result<Option<Self>, XdpAttachmentError> {
        let unreadable = |detail: String| XdpAttachmentError::Unreadable {
            command: "ip -d -j link".into(),
            detail,
        };
        let links: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| unreadable(e.to_string()))?;
        let link = links
            .get(0)
            .ok_or_else(|| unreadable("an empty list".into()))?;
        let Some(xdp) = link.get("xdp") else {
            return Ok(None);
        };
        let mode = xdp
            .get("mode")
            .and_then(serde_json::Value::as_u64)
            .and_then(AttachMode::from_kernel)
            .ok_or_else(|| XdpAttachmentError::UnknownMode {
                iface: iface.to_owned(),
                mode: xdp.to_string(),
            })?;
        let prog = xdp.get("prog");
        Ok(Some(Self {
            mode,
            prog_id: prog
                .and_then(|p| p.get("id"))
                .and_then(serde_json::Value::as_u64),
            prog_name: prog
                .and_then(|p| p.get("name"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_native_attachment_names_its_program() {
        let json = br#"[{"ifindex":7,"ifname":"lb","xdp":{"mode":1,"prog":{"id":42,"name":"pass","tag":"ab"}}}]"#;
        let attached = XdpAttachment::from_ip_link_json(json, "lb").expect("readable");
        assert_eq!(
            attached,
            Some(XdpAttachment {
                mode: AttachMode::Native,
                prog_id: Some(42),
                prog_name: Some("pass".into()),
            })
        );
    }

    #[test]
    fn a_nic_without_xdp_has_no_attachment() {
        let json = br#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"]}]"#;
        assert_eq!(
            XdpAttachment::from_ip_link_json(json, "lo").expect("readable"),
            None
        );
    }

    #[test]
    fn several_programs_read_as_multi_without_one_id() {
        let json = br#"[{"ifname":"eth0","xdp":{"mode":4,"attached":[{"mode":1,"prog":{"id":1}},{"mode":2,"prog":{"id":2}}]}}]"#;
        let attached = XdpAttachment::from_ip_link_json(json, "eth0")
            .expect("readable")
            .expect("attached");
        assert_eq!((attached.mode, attached.prog_id), (AttachMode::Multi, None));
    }

    #[test]
    fn an_unknown_mode_is_an_error_not_a_guess() {
        let json = br#"[{"ifname":"eth0","xdp":{"mode":9}}]"#;
        assert!(matches!(
            XdpAttachment::from_ip_link_json(json, "eth0"),
            Err(XdpAttachmentError::UnknownMode { .. })
        ));
        assert!(XdpAttachment::from_ip_link_json(b"Device not found", "eth0").is_err());
    }

    #[test]
    fn modes_serialize_as_the_agent_reports_them() {
        assert_eq!(
            serde_json::to_string(&AttachMode::Native).expect("json"),
            r#""native""#
        );
        assert_eq!(
            serde_json::to_string(&AttachMode::Generic).expect("json"),
            r#""generic""#
        );
    }
}
