//! Bad input gets a clear problem-details answer and never a 500.
