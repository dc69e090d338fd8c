. .gpujobs/pre.sh
timeout 280 python3 -m lowvram bench multigpu --parts cp720 --compile --fast fp8_fast --out $OUT/cp720.json > $OUT/cp720.log 2>&1; echo "rc cp720 $?"
timeout 120 python3 -m lowvram bench multigpu --smoke --out $OUT/smoke.json > $OUT/smoke.log 2>&1; echo "rc smoke $?"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_single_file_cuda.py tests/test_fast_cuda.py tests/test_quant_offload.py > $OUT/cuda_tests.log 2>&1; echo "rc pytest $?"
for f in cp720 smoke cuda_tests; do echo "== $f"; grep -v Warning $OUT/$f.log | tail -15; done
cd $OUT && tar czf call3.tgz --exclude="*.mp4" * && find . -mindepth 1 ! -name call3.tgz -delete; ls -la $OUT
