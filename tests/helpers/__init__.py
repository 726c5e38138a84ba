"""Helpers the tests import: data paths and markers, toy inputs, CLI runners, banks, small models."""
