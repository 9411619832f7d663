//! The safetensors header parser: any bytes give tensors whose views stay in bounds, or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use maple_core::{SafeTensors, TensorSource};

fuzz_target!(|data: &[u8]| {
    if let Ok(st) = SafeTensors::parse(data) {
        for n in st.names() {
            let t = st.tensor(n).unwrap();
            assert_eq!(t.data.len(), t.numel() * t.dtype.size());
        }
    }
});
