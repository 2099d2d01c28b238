//! vcenter-shim: the management plane (not built yet, issue 7).
