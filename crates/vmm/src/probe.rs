//! Backend probe (to be written).
