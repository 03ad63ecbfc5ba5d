"""The optical-depth task: sequences of image frames regressed to one scalar optical depth."""
