//! The pickle interpreter, and the torch archive reader around it: any bytes give a value or
//! an error, never a panic, hang or runaway allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use maple_core::checkpoint::{pickle::unpickle, TorchCheckpoint};
use maple_core::TensorSource;

fuzz_target!(|data: &[u8]| {
    let _ = unpickle(data);
    if let Ok(ck) = TorchCheckpoint::parse(data) {
        for n in ck.names() {
            let _ = ck.tensor(n).map(|t| t.to_f32(n));
        }
    }
});
