//! The built-in steps, conditions and prerequisites a profile may name.
//!
//! These are the names of the seed's deployment and rollback procedures.
//! Anything else must be a plugin declared under `plugins`.

/// Built-in steps of each deployment phase.
pub const PREPARATION_STEPS: &[&str] = &[
    "validate_environment",
    "validate_requirements",
    "check_dependencies",
    "backup_existing_data",
];
pub const DEPLOYMENT_STEPS: &[&str] = &[
    "deploy_infrastructure",
    "deploy_core_services",
    "deploy_agents",
    "configure_monitoring",
];
pub const VERIFICATION_STEPS: &[&str] = &[
    "verify_connectivity",
    "check_service_health",
    "validate_metrics",
    "test_functionality",
    "check_gpu_allocatable",
    "check_autoscaler",
];

/// Conditions that trigger an automatic rollback.
pub const ROLLBACK_CONDITIONS: &[&str] = &[
    "health_check_failure",
    "high_error_rate",
    "resource_exhaustion",
];
/// Steps of an automatic rollback.
pub const AUTOMATIC_ROLLBACK_STEPS: &[&str] = &[
    "stop_deployment",
    "revert_version",
    "restore_configuration",
    "verify_rollback",
];
/// What must hold before a manual rollback.
pub const MANUAL_PREREQUISITES: &[&str] = &["backup_verification", "approval_from_lead"];
/// Steps of a manual rollback.
pub const MANUAL_ROLLBACK_STEPS: &[&str] = &[
    "manual_verification",
    "controlled_rollback",
    "system_validation",
];

/// Kubernetes minor versions EKS supports (standard and extended support).
pub const SUPPORTED_KUBERNETES: &[(u64, u64)] = &[
    (1, 28),
    (1, 29),
    (1, 30),
    (1, 31),
    (1, 32),
    (1, 33),
    (1, 34),
];

/// The oldest Kubernetes version the Task Execution Layer runs on.
pub const MIN_KUBERNETES: (u64, u64) = (1, 28);

/// EC2 instance families with NVIDIA GPUs.
pub const GPU_FAMILIES: &[&str] = &[
    "p2", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "g3", "g3s", "g4dn", "g5", "g5g", "g6",
    "g6e", "gr6",
];

/// Whether an instance type (`g5.xlarge`) has NVIDIA GPUs.
pub fn is_gpu_instance(instance_type: &str) -> bool {
    instance_type
        .split_once('.')
        .is_some_and(|(family, _)| GPU_FAMILIES.contains(&family))
}
