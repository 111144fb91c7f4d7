"""SAOM on ROS 2: a lifecycle node (`saom_node`) and an offline bag tool (`saom bag`).

Everything except `saom_ros.node` is ROS-free (numpy, rosbags) and unit-tested without rclpy:
`params` (parameter schema and validation), `conversions` (images and vision_msgs fields),
`pipeline` (latest-frame slot, worker, prompt matching, statistics), `model` (segmenter factory),
`bag` (rosbag2 in, rosbag2 out). `saom_ros.node` is the thin rclpy wiring.

Conventions shared by the node and the bag tool:

* `Detection2D.results[0].hypothesis.class_id` is the decimal string of the class index in the
  model's class list (``"3"``), the same number as `VisionClass.class_id` (uint16) in `LabelInfo`,
  so ``int(class_id)`` looks the name up in the label map. 0 is "background" (only output when
  `keep_background` is set).
* `Detection2D.id` is the instance's pixel value in the mono16 `instance_mask` (``"1"`` is the best
  instance; 0 in the mask means no instance).
* Every output carries the input image's header (stamp and frame_id).
"""
