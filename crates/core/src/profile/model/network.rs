use crate::profile::value::{Checked, Cidr, PortRange};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The VPC, its subnets and the security rules.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Network {
    pub vpc: Vpc,
    pub subnets: Subnets,
    #[serde(default)]
    pub nat_gateways: NatGateways,
    #[serde(default)]
    pub security: Security,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Vpc {
    pub cidr: Checked<Cidr>,
}

/// Public and private subnets; every zone needs one of each.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Subnets {
    pub public: Vec<Subnet>,
    pub private: Vec<Subnet>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Subnet {
    pub cidr: Checked<Cidr>,
    /// Availability zone, e.g. `us-west-2a`.
    pub zone: String,
}

/// NAT gateways for the private subnets' egress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NatGateways {
    /// One NAT gateway shared by all zones (cheaper; a zone outage cuts egress).
    #[default]
    Single,
    /// One NAT gateway per zone (highly available).
    PerZone,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Security {
    #[serde(default)]
    pub ingress_rules: Vec<IngressRule>,
    #[serde(default)]
    pub egress_rules: Vec<EgressRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct IngressRule {
    pub port: Checked<PortRange>,
    pub source: Checked<Cidr>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EgressRule {
    pub port: Checked<PortRange>,
    pub destination: Checked<Cidr>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Icmp,
    All,
}
