"""Tests of anomalib-anogen."""
