"""The plugin API: what users and plugin authors touch. Imports nothing else of slimkit."""
