"""Hardware profiles (YAML data); a package only so that they install with moesim."""
