//! The RTDE output fields linetap knows, with their types (UR's RTDE guide, "Controller
//! outputs"): a point's type when none is given, a typo caught by `check`, and what the
//! simulator serves. A field not listed here may still exist on a newer controller: a point
//! that names one gives its `type`, and the controller's setup reply decides.

use super::protocol::FieldType::{self, *};

const FIXED: &[(&str, FieldType)] = &[
    ("timestamp", Double),
    ("target_q", Vector6d),
    ("target_qd", Vector6d),
    ("target_qdd", Vector6d),
    ("target_current", Vector6d),
    ("target_moment", Vector6d),
    ("actual_q", Vector6d),
    ("actual_qd", Vector6d),
    ("actual_current", Vector6d),
    ("actual_current_window", Vector6d),
    ("actual_current_as_torque", Vector6d),
    ("joint_control_output", Vector6d),
    ("actual_TCP_pose", Vector6d),
    ("actual_TCP_speed", Vector6d),
    ("actual_TCP_force", Vector6d),
    ("target_TCP_pose", Vector6d),
    ("target_TCP_speed", Vector6d),
    ("actual_digital_input_bits", Uint64),
    ("joint_temperatures", Vector6d),
    ("actual_execution_time", Double),
    ("robot_mode", Int32),
    ("joint_mode", Vector6Int32),
    ("safety_mode", Int32),
    ("safety_status", Int32),
    ("actual_tool_accelerometer", Vector3d),
    ("speed_scaling", Double),
    ("target_speed_fraction", Double),
    ("actual_momentum", Double),
    ("actual_main_voltage", Double),
    ("actual_robot_voltage", Double),
    ("actual_robot_current", Double),
    ("actual_joint_voltage", Vector6d),
    ("actual_digital_output_bits", Uint64),
    ("runtime_state", Uint32),
    ("elbow_position", Vector3d),
    ("elbow_velocity", Vector3d),
    ("robot_status_bits", Uint32),
    ("safety_status_bits", Uint32),
    ("analog_io_types", Uint32),
    ("standard_analog_input0", Double),
    ("standard_analog_input1", Double),
    ("standard_analog_output0", Double),
    ("standard_analog_output1", Double),
    ("io_current", Double),
    ("euromap67_input_bits", Uint32),
    ("euromap67_output_bits", Uint32),
    ("euromap67_24V_voltage", Double),
    ("euromap67_24V_current", Double),
    ("tool_mode", Uint32),
    ("tool_analog_input_types", Uint32),
    ("tool_analog_input0", Double),
    ("tool_analog_input1", Double),
    ("tool_output_voltage", Int32),
    ("tool_output_current", Double),
    ("tool_temperature", Double),
    ("tcp_force_scalar", Double),
    ("output_bit_registers0_to_31", Uint32),
    ("output_bit_registers32_to_63", Uint32),
    ("input_bit_registers0_to_31", Uint32),
    ("input_bit_registers32_to_63", Uint32),
    ("payload", Double),
    ("payload_cog", Vector3d),
    ("payload_inertia", Vector6d),
    ("script_control_line", Uint32),
    ("ft_raw_wrench", Vector6d),
    ("joint_position_deviation_ratio", Double),
    ("collision_detection_ratio", Double),
    ("tool_output_mode", Uint8),
    ("tool_digital_output0_mode", Uint8),
    ("tool_digital_output1_mode", Uint8),
];

/// Numbered registers: prefix, numbers, type.
const NUMBERED: &[(&str, std::ops::RangeInclusive<u32>, FieldType)] = &[
    ("output_int_register_", 0..=47, Int32),
    ("output_double_register_", 0..=47, Double),
    ("input_int_register_", 0..=47, Int32),
    ("input_double_register_", 0..=47, Double),
    ("output_bit_register_", 64..=127, Bool),
    ("input_bit_register_", 64..=127, Bool),
];

/// The type of a known output field.
pub fn lookup(name: &str) -> Option<FieldType> {
    if let Some((_, t)) = FIXED.iter().find(|(n, _)| *n == name) {
        return Some(*t);
    }
    NUMBERED.iter().find_map(|(prefix, range, t)| {
        let n: u32 = name.strip_prefix(prefix)?.parse().ok()?;
        // No leading zeros or signs: "output_int_register_07" is not a field.
        (range.contains(&n) && name.len() == prefix.len() + n.to_string().len()).then_some(*t)
    })
}

/// The known field closest to a misspelt `name` (for "did you mean"); a numbered register
/// is named by its prefix.
pub fn closest(name: &str) -> Option<&'static str> {
    let names = FIXED
        .iter()
        .map(|(n, _)| *n)
        .chain(NUMBERED.iter().map(|(p, _, _)| *p));
    // Within a quarter of the name's length (at least 3 edits).
    let best = crate::config::validate::closest(name, names.clone(), usize::MAX)?;
    let d = 3.max(best.len() / 4);
    crate::config::validate::closest(name, names, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_numbered_registers() {
        assert_eq!(lookup("actual_q"), Some(Vector6d));
        assert_eq!(lookup("runtime_state"), Some(Uint32));
        assert_eq!(lookup("output_int_register_24"), Some(Int32));
        assert_eq!(lookup("output_double_register_47"), Some(Double));
        assert_eq!(lookup("output_int_register_48"), None);
        assert_eq!(lookup("output_int_register_07"), None);
        assert_eq!(lookup("output_bit_register_64"), Some(Bool));
        assert_eq!(lookup("output_bit_register_63"), None);
        assert_eq!(lookup("actual_qq"), None);
        assert_eq!(closest("actual_qq"), Some("actual_q"));
        assert_eq!(closest("actual_tcp_pose"), Some("actual_TCP_pose"));
        assert_eq!(
            closest("output_int_registr_3"),
            Some("output_int_register_")
        );
        assert_eq!(closest("something_else_entirely"), None);
    }
}
