use bitflags::bitflags;

bitflags! {
    /// What an agent says it can do (AgentCapabilities bits of the OpAMP spec).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct AgentCapabilities: u64 {
        const REPORTS_STATUS = 0x1;
        const ACCEPTS_REMOTE_CONFIG = 0x2;
        const REPORTS_EFFECTIVE_CONFIG = 0x4;
        const ACCEPTS_PACKAGES = 0x8;
        const REPORTS_PACKAGE_STATUSES = 0x10;
        const REPORTS_OWN_TRACES = 0x20;
        const REPORTS_OWN_METRICS = 0x40;
        const REPORTS_OWN_LOGS = 0x80;
        const ACCEPTS_OPAMP_CONNECTION_SETTINGS = 0x100;
        const ACCEPTS_OTHER_CONNECTION_SETTINGS = 0x200;
        const ACCEPTS_RESTART_COMMAND = 0x400;
        const REPORTS_HEALTH = 0x800;
        const REPORTS_REMOTE_CONFIG = 0x1000;
        const REPORTS_HEARTBEAT = 0x2000;
        const REPORTS_AVAILABLE_COMPONENTS = 0x4000;
        const REPORTS_CONNECTION_SETTINGS_STATUS = 0x8000;
    }
}

bitflags! {
    /// What Corral offers (ServerCapabilities bits of the OpAMP spec).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct ServerCapabilities: u64 {
        const ACCEPTS_STATUS = 0x1;
        const OFFERS_REMOTE_CONFIG = 0x2;
        const ACCEPTS_EFFECTIVE_CONFIG = 0x4;
        const OFFERS_PACKAGES = 0x8;
        const ACCEPTS_PACKAGES_STATUS = 0x10;
        const OFFERS_CONNECTION_SETTINGS = 0x20;
        const ACCEPTS_CONNECTION_SETTINGS_REQUEST = 0x40;
    }
}

const AGENT_CAPABILITY_NAMES: [(AgentCapabilities, &str); 16] = [
    (AgentCapabilities::REPORTS_STATUS, "ReportsStatus"),
    (
        AgentCapabilities::ACCEPTS_REMOTE_CONFIG,
        "AcceptsRemoteConfig",
    ),
    (
        AgentCapabilities::REPORTS_EFFECTIVE_CONFIG,
        "ReportsEffectiveConfig",
    ),
    (AgentCapabilities::ACCEPTS_PACKAGES, "AcceptsPackages"),
    (
        AgentCapabilities::REPORTS_PACKAGE_STATUSES,
        "ReportsPackageStatuses",
    ),
    (AgentCapabilities::REPORTS_OWN_TRACES, "ReportsOwnTraces"),
    (AgentCapabilities::REPORTS_OWN_METRICS, "ReportsOwnMetrics"),
    (AgentCapabilities::REPORTS_OWN_LOGS, "ReportsOwnLogs"),
    (
        AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS,
        "AcceptsOpAMPConnectionSettings",
    ),
    (
        AgentCapabilities::ACCEPTS_OTHER_CONNECTION_SETTINGS,
        "AcceptsOtherConnectionSettings",
    ),
    (
        AgentCapabilities::ACCEPTS_RESTART_COMMAND,
        "AcceptsRestartCommand",
    ),
    (AgentCapabilities::REPORTS_HEALTH, "ReportsHealth"),
    (
        AgentCapabilities::REPORTS_REMOTE_CONFIG,
        "ReportsRemoteConfig",
    ),
    (AgentCapabilities::REPORTS_HEARTBEAT, "ReportsHeartbeat"),
    (
        AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS,
        "ReportsAvailableComponents",
    ),
    (
        AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS,
        "ReportsConnectionSettingsStatus",
    ),
];

impl AgentCapabilities {
    /// The spec's names of the set bits, in bit order; unknown bits are dropped.
    pub fn names(self) -> Vec<&'static str> {
        AGENT_CAPABILITY_NAMES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| *name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_bit_order_and_skip_unknown_bits() {
        let caps = AgentCapabilities::from_bits_retain(0x1 | 0x800 | 0x2 | 0x1_0000);
        assert_eq!(
            caps.names(),
            ["ReportsStatus", "AcceptsRemoteConfig", "ReportsHealth"]
        );
    }
}
