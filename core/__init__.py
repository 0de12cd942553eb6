"""The bottom layer: errors, the bundle config, the manifest, export contracts as data, devices,
temporary files and the event curve's definition. Imports nothing from the rest of v2m."""
