. .gpujobs/pre.sh
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv > $OUT/gpus.txt; free -g >> $OUT/gpus.txt
(CUDA_VISIBLE_DEVICES=0 timeout 545 python3 -m lowvram bench fast --models 14b --resolutions 480p --table-only --out $OUT/fast14-480.json > $OUT/fast14-480.log 2>&1; echo "rc480 $?") &
(CUDA_VISIBLE_DEVICES=1 timeout 545 python3 -m lowvram bench fast --models 14b --resolutions 720p --out $OUT/fast14-720.json > $OUT/fast14-720.log 2>&1; echo "rc720 $?") &
wait
grep -v Warning $OUT/fast14-480.log | tail -25; grep -v Warning $OUT/fast14-720.log | tail -25
cd $OUT && tar czf call1.tgz --exclude="*.mp4" * && find . -mindepth 1 ! -name call1.tgz -delete; ls -la $OUT
