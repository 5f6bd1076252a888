"""Built-in data (hardware profiles, shipped traces), mapped here from the top-level folders."""
