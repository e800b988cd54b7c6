"""The techniques, one file each, grouped by family (inspect, attribute, synthesize); `accel.list_methods()` lists
what registered."""
