"""Small applications that use taskwarren (tested in tests/frameworks/)."""
